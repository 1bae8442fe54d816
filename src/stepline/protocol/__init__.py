"""The wire contract with Inngest SDKs, shared by the server (``stepline.server``) and by apps Stepline serves
(``stepline.serving``): ``calls`` (call request bodies, memo wire form, what responses mean) and ``signing``
(JCS canonical JSON, request signatures, SDK bearer keys). Pure functions, no I/O; imports records only."""

"""The Stepline server: event API, SDK sync and calls (Inngest protocol), REST API."""

-- Results and errors of steps and runs keep the exact JSON text they were written with (json, not jsonb).
-- jsonb reorders object keys and rewrites numbers (1e+20 becomes 100000000000000000000, read back as an int),
-- so code replaying a step from the store would see another value than the execution that ran it, which goes on
-- with its own value before the result is written (StepDriver._hold_back). And jsonb refuses \u0000, so a run
-- returning or raising text with a NUL character could never end.
ALTER TABLE steps ALTER COLUMN output TYPE json USING output::json;
ALTER TABLE steps ALTER COLUMN error TYPE json USING error::json;
ALTER TABLE runs ALTER COLUMN output TYPE json USING output::json;
ALTER TABLE runs ALTER COLUMN error TYPE json USING error::json;
-- Events carry results and errors (stepline/function.finished, .failed): the same for their data.
ALTER TABLE events ALTER COLUMN data TYPE json USING data::json;
ALTER TABLE events ALTER COLUMN "user" TYPE json USING "user"::json;

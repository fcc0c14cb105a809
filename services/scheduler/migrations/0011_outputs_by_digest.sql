-- The assets service asks which of a few digests a user's jobs produced
-- (files stored before it recorded who holds what); without this index that
-- would read every output of the user's jobs.
CREATE INDEX outputs_digest ON outputs (digest);

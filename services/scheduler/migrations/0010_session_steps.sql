-- Steps that run as written through the OpenJD session model keep their
-- script (kiln_jobmodel::SessionStep as JSON) and each task its parameter
-- values (a serialised OpenJD symbol table); both NULL for Kiln's own
-- command lines, which `tasks.command`/`tasks.args` carry.
ALTER TABLE steps ADD COLUMN session_step text;
ALTER TABLE tasks ADD COLUMN task_symbols text;

-- The highest job priority a token may give: priorities above high (75)
-- only where an admin granted them. Admin tokens may give any.
ALTER TABLE tokens
    ADD COLUMN max_priority integer NOT NULL DEFAULT 75
    CHECK (max_priority BETWEEN 0 AND 100);

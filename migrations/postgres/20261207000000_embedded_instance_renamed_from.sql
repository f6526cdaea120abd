-- An embedded rename under way: the row already carries the new name (phase
-- `renaming`) and this the old one, until the instance's directory and config
-- follow. A restart after lxgate was killed in between finishes the rename.
ALTER TABLE embedded_instances ADD COLUMN renamed_from TEXT;

-- Who may read each document (issue 13, README "Permissions"): `permissions`
-- holds the whole of it as JSON (readers, also_required, the source's form);
-- `readers` repeats its first list as an array, so a GIN index finds what a
-- reader may see with `readers && principals`. Rows written before this
-- migration have no readers: nobody sees them until they are written again.
ALTER TABLE documents ADD COLUMN readers TEXT[] NOT NULL DEFAULT '{}';
CREATE INDEX documents_readers ON documents USING GIN (readers);

-- Whether a reader holding `principals` (normalized: 'user:alice@example.com',
-- 'group:eng', 'domain:example.com', 'anyone', ...) may read a document with
-- these permissions: one principal of `readers` and one of every list in
-- `also_required`; 'anyone' in a list is held by every reader. Use it beside
-- `readers && principals` (which the index answers):
--   SELECT id, title, url FROM documents
--   WHERE readers && $1 AND tidemark_may_read(permissions, $1) AND search @@ websearch_to_tsquery('english', $2);
CREATE FUNCTION tidemark_may_read(permissions JSONB, principals TEXT[]) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT permissions IS NOT NULL
        AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(COALESCE(permissions->'readers', '[]')) r
                    WHERE r = 'anyone' OR r = ANY(principals))
        AND NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(COALESCE(permissions->'also_required', '[]')) l
            WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(l) r
                              WHERE r = 'anyone' OR r = ANY(principals)))
$$;

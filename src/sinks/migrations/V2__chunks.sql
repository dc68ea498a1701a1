-- Chunks of documents, for sinks configured with [sink.chunks]: one row per
-- passage. A row is named by its text's hash (and which copy of that text it
-- is within the document), so its content never changes under its key: an
-- embedding stored beside it stays valid for as long as the row exists, and
-- the rows to embed are the ones without one. A document's rewrite deletes
-- the rows whose text is gone and inserts only the new ones; its deletion
-- removes them all.
CREATE TABLE chunks (
    source      TEXT        NOT NULL,
    document_id TEXT        NOT NULL,
    chunk_hash  TEXT        NOT NULL,
    occurrence  INTEGER     NOT NULL,
    -- Position in the document, from 0 (changes when chunks before it come or go).
    seq         INTEGER     NOT NULL,
    -- Byte offset in the document's content where the chunk's own text starts.
    char_start  BIGINT      NOT NULL,
    content     TEXT        NOT NULL,
    written_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, document_id, chunk_hash, occurrence),
    FOREIGN KEY (source, document_id) REFERENCES documents (source, id) ON DELETE CASCADE
);

CREATE INDEX chunks_in_order ON chunks (source, document_id, seq);

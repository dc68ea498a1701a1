-- The document contract (README, "The document contract"), one row per
-- document of a source, and one fence row per source.

CREATE TABLE tidemark_fences (
    source TEXT PRIMARY KEY,
    -- The highest fencing token seen for the source: writes under a lower one are refused.
    token  BIGINT NOT NULL
);

CREATE TABLE documents (
    source         TEXT        NOT NULL,
    id             TEXT        NOT NULL,
    schema_version INTEGER     NOT NULL,
    title          TEXT        NOT NULL,
    breadcrumb     TEXT[]      NOT NULL,
    parent         TEXT,
    version        TEXT        NOT NULL,
    content        TEXT        NOT NULL,
    url            TEXT,
    mime_type      TEXT,
    modified_at    TIMESTAMPTZ,
    size_bytes     BIGINT,
    source_sha256  TEXT,
    content_note   TEXT,
    raw_html       TEXT,
    content_hash   TEXT        NOT NULL,
    fencing_token  BIGINT      NOT NULL,
    -- [{"target": id, "title": title or null}, ...]
    links          JSONB       NOT NULL DEFAULT '[]',
    -- Who may read the document (issue 13); null until connectors report it.
    permissions    JSONB,
    written_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Full-text search out of the box: the title weighs more than the body. A
    -- tsvector holds at most 1 MB, so only the first 500,000 characters of
    -- the content are indexed (the content itself is stored whole).
    search         TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') ||
        setweight(to_tsvector('english', left(content, 500000)), 'B')
    ) STORED,
    PRIMARY KEY (source, id)
);

CREATE INDEX documents_search ON documents USING GIN (search);
CREATE INDEX documents_permissions ON documents USING GIN (permissions);

//! Text extraction: the bytes a source hands over (a PDF, an Office file, an
//! HTML page, text in some charset) turned into the readable text a retriever
//! indexes. Every connector goes through here, so a PDF reads the same whether
//! it came from Drive, a web server or a file share.
//!
//! Invariants:
//! - Each format is read by a maintained crate (`pdf-extract`, `calamine`,
//!   `zip` with `quick-xml`, `scraper`, `encoding_rs`); nothing here parses a
//!   binary format by hand.
//! - A format without an extractor (images, video, archives) is not an error:
//!   it yields empty text, and the document still exists with its metadata.
//! - Hostile input is an [`Error`] naming the format and what was wrong, never
//!   a panic: a panic inside a parser is caught and reported as such.
//! - Output is normalised the same way for every format: `\n` line ends, no
//!   trailing spaces, at most one blank line in a row, no leading or trailing blank lines.

mod html;
mod office;
mod pdf;
mod text;

use std::fmt;

pub use html::{html_text, html_title, storage_text};
pub use text::{charset_of_content_type, decode, decode_html};

/// A file format tidemark can (or knowingly cannot) turn into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Plain text in some charset (also Markdown, CSV, JSON, XML, source code).
    Text,
    /// An HTML or XHTML page.
    Html,
    /// A PDF.
    Pdf,
    /// A Word document (`.docx`).
    Docx,
    /// A PowerPoint deck (`.pptx`).
    Pptx,
    /// A spreadsheet (`.xlsx`, `.xls`, `.xlsb`, `.ods`).
    Spreadsheet,
    /// Anything else (images, video, archives): kept as metadata, no text.
    Unsupported,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Text => "text",
            Format::Html => "HTML",
            Format::Pdf => "PDF",
            Format::Docx => "DOCX",
            Format::Pptx => "PPTX",
            Format::Spreadsheet => "spreadsheet",
            Format::Unsupported => "unsupported format",
        })
    }
}

/// MIME type of a Word document.
pub const DOCX_MIME: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
/// MIME type of an Excel workbook.
pub const XLSX_MIME: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
/// MIME type of a PowerPoint deck.
pub const PPTX_MIME: &str = "application/vnd.openxmlformats-officedocument.presentationml.presentation";
/// MIME type of a PDF.
pub const PDF_MIME: &str = "application/pdf";

impl Format {
    /// The format a MIME type names (parameters such as `; charset=` ignored).
    pub fn of_mime(mime: &str) -> Format {
        let essence = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "text/html" | "application/xhtml+xml" => Format::Html,
            PDF_MIME => Format::Pdf,
            DOCX_MIME => Format::Docx,
            PPTX_MIME => Format::Pptx,
            XLSX_MIME
            | "application/vnd.ms-excel"
            | "application/vnd.ms-excel.sheet.binary.macroenabled.12"
            | "application/vnd.oasis.opendocument.spreadsheet" => Format::Spreadsheet,
            m if m.starts_with("text/") => Format::Text,
            "application/json"
            | "application/xml"
            | "application/x-yaml"
            | "application/yaml"
            | "application/javascript"
            | "application/x-sh"
            | "application/sql" => Format::Text,
            _ => Format::Unsupported,
        }
    }

    /// The format a file's bytes show, for sources that only have a file name
    /// or a generic type (`application/octet-stream`): magic numbers first,
    /// then "text if it decodes without control bytes".
    pub fn sniff(bytes: &[u8]) -> Format {
        if bytes.starts_with(b"%PDF-") {
            return Format::Pdf;
        }
        if bytes.starts_with(b"PK\x03\x04") {
            return office::sniff_zip(bytes);
        }
        if bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
            // An OLE compound file: of the old Office formats, calamine reads `.xls`.
            return Format::Spreadsheet;
        }
        let head = &bytes[..bytes.len().min(8192)];
        let lower = String::from_utf8_lossy(&head[..head.len().min(512)]).to_ascii_lowercase();
        let trimmed = lower.trim_start_matches('\u{feff}').trim_start();
        if trimmed.starts_with("<!doctype html") || trimmed.starts_with("<html") {
            return Format::Html;
        }
        if text::looks_like_text(head) {
            Format::Text
        } else {
            Format::Unsupported
        }
    }
}

/// Why bytes could not be read as their format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} could not be read: {reason}")]
pub struct Error {
    /// The format the bytes were read as.
    pub format: Format,
    /// What was wrong, in the parser's words.
    pub reason: String,
}

impl Error {
    fn new(format: Format, reason: impl fmt::Display) -> Self {
        Self {
            format,
            reason: reason.to_string(),
        }
    }
}

/// The readable text of `bytes` read as `format`; `charset` is the one the
/// source declared (a `Content-Type` parameter), used by text and HTML.
pub fn extract(bytes: &[u8], format: Format, charset: Option<&str>) -> Result<String, Error> {
    let raw = match format {
        Format::Text => decode(bytes, charset),
        Format::Html => html_text(&text::decode_html(bytes, charset)),
        Format::Pdf => pdf::text(bytes)?,
        Format::Docx => office::docx_text(bytes)?,
        Format::Pptx => office::pptx_text(bytes)?,
        Format::Spreadsheet => office::spreadsheet_text(bytes)?,
        Format::Unsupported => String::new(),
    };
    Ok(tidy(&raw))
}

/// Normalises extracted text: `\n` line ends, trailing spaces gone, runs of
/// blank lines folded to one, no blank lines at either end.
pub fn tidy(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut blank_run = 0usize;
    for line in raw.replace("\r\n", "\n").replace('\r', "\n").split('\n') {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
            if blank_run > 0 {
                out.push('\n');
            }
        }
        blank_run = 0;
        out.push_str(line);
    }
    out
}

/// Runs a parser that may panic on hostile input, turning a panic into an [`Error`].
fn guarded<T>(format: Format, parse: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Error::new(
                format,
                format_args!("the parser failed on this file ({what})"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MIME types name their format, parameters and case aside.
    #[test]
    fn formats_of_mime_types() {
        assert_eq!(Format::of_mime("text/html; charset=ISO-8859-1"), Format::Html);
        assert_eq!(Format::of_mime("Application/PDF"), Format::Pdf);
        assert_eq!(Format::of_mime(DOCX_MIME), Format::Docx);
        assert_eq!(Format::of_mime(PPTX_MIME), Format::Pptx);
        assert_eq!(Format::of_mime(XLSX_MIME), Format::Spreadsheet);
        assert_eq!(Format::of_mime("text/markdown"), Format::Text);
        assert_eq!(Format::of_mime("text/csv"), Format::Text);
        assert_eq!(Format::of_mime("image/png"), Format::Unsupported);
        assert_eq!(Format::of_mime("application/zip"), Format::Unsupported);
    }

    /// Content tells a PDF, an HTML page, text and binary apart.
    #[test]
    fn sniffing() {
        assert_eq!(Format::sniff(b"%PDF-1.7\n..."), Format::Pdf);
        assert_eq!(Format::sniff(b"  <!DOCTYPE html><html>"), Format::Html);
        assert_eq!(Format::sniff("caf\u{e9} au lait\n".as_bytes()), Format::Text);
        assert_eq!(Format::sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Format::Unsupported);
        assert_eq!(Format::sniff(&[0u8, 1, 2, 3, 255, 254]), Format::Unsupported);
    }

    /// Blank-line runs fold to one, ends are trimmed, CRLF becomes LF.
    #[test]
    fn tidying() {
        assert_eq!(tidy("\n\n a  \r\n\r\n\r\nb\t\n\n"), " a\n\nb");
        assert_eq!(tidy(""), "");
    }

    /// An unsupported format is empty text, not an error; garbage in a known format is an error naming it.
    #[test]
    fn unsupported_and_corrupt() {
        assert_eq!(extract(b"\x89PNG", Format::Unsupported, None), Ok(String::new()));
        let e = extract(b"%PDF-1.4 garbage", Format::Pdf, None).expect_err("corrupt");
        assert_eq!(e.format, Format::Pdf);
        assert!(e.to_string().starts_with("PDF could not be read"), "{e}");
        let e = extract(b"PK\x03\x04 not really", Format::Docx, None).expect_err("corrupt");
        assert_eq!(e.format, Format::Docx);
    }
}

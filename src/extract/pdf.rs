//! PDF text, page by page, through `pdf-extract` (which reads the PDF with `lopdf`).
//!
//! Pages are separated by a blank line. A scanned PDF (images only) yields
//! empty text, not an error: there is no text layer to read.

use super::{Error, Format, guarded};

/// The text of every page of a PDF.
pub(super) fn text(bytes: &[u8]) -> Result<String, Error> {
    guarded(Format::Pdf, || {
        let pages = pdf_extract::extract_text_from_mem_by_pages(bytes).map_err(|e| Error::new(Format::Pdf, e))?;
        Ok(pages.iter().map(|p| p.trim()).collect::<Vec<_>>().join("\n\n"))
    })
}

//! Office files: Word and PowerPoint (Office Open XML: a ZIP of XML parts, read
//! with `zip` and `quick-xml`) and spreadsheets (`calamine`: xlsx, xls, xlsb, ods).
//!
//! What is kept: the text runs of the body (Word: `word/document.xml`;
//! PowerPoint: every `ppt/slides/slideN.xml` in slide order), one line per
//! paragraph, tabs and line breaks as written; every sheet of a workbook, its
//! name as a heading, then its rows as comma-separated values.

use std::io::{Cursor, Read};

use calamine::Reader as _;
use quick_xml::events::Event;

use super::{DOCX_MIME, Error, Format, PPTX_MIME, XLSX_MIME, guarded};

/// Largest XML part read from an Office file (a ZIP bomb guard).
const MAX_PART_BYTES: u64 = 64 * 1024 * 1024;

/// What kind of Office Open XML package a ZIP is, from its `[Content_Types].xml`.
pub(super) fn sniff_zip(bytes: &[u8]) -> Format {
    let Ok(mut zip) = zip::ZipArchive::new(Cursor::new(bytes)) else {
        return Format::Unsupported;
    };
    let Ok(types) = read_part(&mut zip, "[Content_Types].xml", Format::Unsupported) else {
        return Format::Unsupported;
    };
    // The main part's content type is the package's MIME type plus `.main+xml`.
    let main = |mime: &str| {
        let tail = mime.rsplit('.').next().unwrap_or(mime);
        types.contains(&format!("{tail}.main+xml"))
    };
    if main(DOCX_MIME) {
        Format::Docx
    } else if main(PPTX_MIME) {
        Format::Pptx
    } else if main(XLSX_MIME) {
        Format::Spreadsheet
    } else {
        Format::Unsupported
    }
}

/// The body text of a Word document.
pub(super) fn docx_text(bytes: &[u8]) -> Result<String, Error> {
    guarded(Format::Docx, || {
        let mut zip = open(bytes, Format::Docx)?;
        let xml = read_part(&mut zip, "word/document.xml", Format::Docx)?;
        runs_text(&xml, Format::Docx)
    })
}

/// The text of every slide of a PowerPoint deck, in slide order, slides separated by a blank line.
pub(super) fn pptx_text(bytes: &[u8]) -> Result<String, Error> {
    guarded(Format::Pptx, || {
        let mut zip = open(bytes, Format::Pptx)?;
        let mut slides: Vec<(u32, String)> = zip
            .file_names()
            .filter_map(|name| {
                let name = name.ok()?;
                let n = name.strip_prefix("ppt/slides/slide")?.strip_suffix(".xml")?;
                Some((n.parse().ok()?, name.clone().into_owned()))
            })
            .collect();
        if slides.is_empty() {
            return Err(Error::new(Format::Pptx, "no ppt/slides/slideN.xml part"));
        }
        slides.sort();
        let mut out = Vec::with_capacity(slides.len());
        for (_, name) in slides {
            let xml = read_part(&mut zip, &name, Format::Pptx)?;
            out.push(runs_text(&xml, Format::Pptx)?);
        }
        Ok(out.join("\n\n"))
    })
}

/// Every sheet of a workbook: `## <sheet name>` then its rows as CSV.
pub(super) fn spreadsheet_text(bytes: &[u8]) -> Result<String, Error> {
    guarded(Format::Spreadsheet, || {
        let mut book =
            calamine::open_workbook_auto_from_rs(Cursor::new(bytes)).map_err(|e| Error::new(Format::Spreadsheet, e))?;
        let mut out = String::new();
        for name in book.sheet_names() {
            let range = book
                .worksheet_range(&name)
                .map_err(|e| Error::new(Format::Spreadsheet, format_args!("sheet {name:?}: {e}")))?;
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str("## ");
            out.push_str(&name);
            out.push('\n');
            for row in range.rows() {
                let cells: Vec<String> = row.iter().map(|c| csv_cell(&c.to_string())).collect();
                out.push_str(cells.join(",").trim_end_matches(','));
                out.push('\n');
            }
        }
        Ok(out)
    })
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_cell(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

fn open(bytes: &[u8], format: Format) -> Result<zip::ZipArchive<Cursor<&[u8]>>, Error> {
    zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| Error::new(format, format_args!("not a ZIP package: {e}")))
}

fn read_part(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str, format: Format) -> Result<String, Error> {
    let part = zip
        .by_name(name)
        .map_err(|e| Error::new(format, format_args!("part {name}: {e}")))?;
    let mut xml = String::new();
    part.take(MAX_PART_BYTES)
        .read_to_string(&mut xml)
        .map_err(|e| Error::new(format, format_args!("part {name}: {e}")))?;
    Ok(xml)
}

/// The text runs of a WordprocessingML or DrawingML part: `t` elements' text,
/// a line per paragraph (`p`), `tab` as a tab, `br`/`cr` as a line break.
fn runs_text(xml: &str, format: Format) -> Result<String, Error> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = String::new();
    let mut in_text = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| Error::new(format, format_args!("XML at byte {}: {e}", reader.buffer_position())))?;
        match event {
            Event::Start(e) if e.local_name().as_ref() == "t" => in_text = true,
            Event::End(e) => match e.local_name().as_ref() {
                "t" => in_text = false,
                "p" => out.push('\n'),
                _ => {}
            },
            Event::Empty(e) => match e.local_name().as_ref() {
                "tab" => out.push('\t'),
                "br" | "cr" => out.push('\n'),
                "p" => out.push('\n'),
                _ => {}
            },
            Event::Text(t) if in_text => out.push_str(&t.xml10_content()),
            Event::CData(t) if in_text => out.push_str(&t),
            Event::GeneralRef(r) if in_text => {
                if let Ok(Some(ch)) = r.resolve_char_ref() {
                    out.push(ch);
                } else if let Some(s) = quick_xml::escape::resolve_predefined_entity(&r) {
                    out.push_str(s);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs, tabs, breaks and paragraphs of a WordprocessingML body; entities decoded.
    #[test]
    fn word_runs() {
        let xml = r#"<w:document xmlns:w="x"><w:body>
            <w:p><w:r><w:t>Hello</w:t></w:r><w:r><w:t xml:space="preserve"> wor</w:t><w:t>ld &amp; more</w:t></w:r></w:p>
            <w:p><w:r><w:t>a</w:t><w:tab/><w:t>b</w:t><w:br/><w:t>c&#233;</w:t></w:r></w:p>
            </w:body></w:document>"#;
        assert_eq!(
            runs_text(xml, Format::Docx).expect("xml"),
            "Hello world & more\na\tb\ncé\n"
        );
    }

    /// Broken XML is an error naming the format and the position.
    #[test]
    fn broken_xml() {
        let e = runs_text("<w:p><w:t>x</w:p>", Format::Docx).expect_err("mismatched");
        assert!(e.to_string().starts_with("DOCX could not be read: XML at byte"), "{e}");
    }

    /// CSV fields are quoted only when they need it.
    #[test]
    fn csv_cells() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}

//! Real files for the simulators to serve: a PDF, Word, PowerPoint and Excel
//! file, a PNG, built with maintained crates (`lopdf`, `zip`,
//! `rust_xlsxwriter`) from the text they must contain, so extraction is tested
//! end to end against bytes a real service would hold, and the expected text
//! comes from what was put in, not from what the extractor makes of it.
//!
//! The Office files are minimal packages (content types, relationships, the
//! main part and, for PowerPoint, its slides): what the Office Open XML
//! standard requires for a reader to find the text.

use std::io::{Cursor, Write};

use lopdf::content::{Content, Operation};
use lopdf::{Document, Object, Stream, dictionary};
use quick_xml::escape::escape;
use zip::write::SimpleFileOptions;

/// A 1x1 transparent PNG: an image, which has no text.
pub const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0D, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

/// A PDF with one page per element of `pages`, each line of a page drawn on its
/// own line in Helvetica (a standard font: no font file needed). ASCII text only.
pub fn pdf(pages: &[&str]) -> Vec<u8> {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
        "Encoding" => "WinAnsiEncoding",
    });
    let resources_id = doc.add_object(dictionary! { "Font" => dictionary! { "F1" => font_id } });
    let mut kids = Vec::new();
    for page in pages {
        let mut ops = vec![
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec!["F1".into(), 12.into()]),
            Operation::new("TL", vec![16.into()]),
            Operation::new("Td", vec![72.into(), 770.into()]),
        ];
        for line in page.lines() {
            ops.push(Operation::new("Tj", vec![Object::string_literal(line)]));
            ops.push(Operation::new("T*", vec![]));
        }
        ops.push(Operation::new("ET", vec![]));
        let content = Content { operations: ops }.encode().unwrap_or_default();
        let content_id = doc.add_object(Stream::new(dictionary! {}, content));
        let page_id = doc.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
        });
        kids.push(page_id.into());
    }
    let count = kids.len() as i64;
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => kids,
            "Count" => count,
            "Resources" => resources_id,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog_id);
    doc.compress();
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = doc.save_to(&mut out);
    out
}

const RELS_CT: &str = "application/vnd.openxmlformats-package.relationships+xml";
const OFFICE_DOC_REL: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument";

/// A Word document whose body has one paragraph per element of `paragraphs`.
pub fn docx(paragraphs: &[&str]) -> Vec<u8> {
    let body: String = paragraphs
        .iter()
        .map(|p| format!("<w:p><w:r><w:t xml:space=\"preserve\">{}</w:t></w:r></w:p>", escape(*p)))
        .collect();
    let document = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<w:document xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"><w:body>{body}</w:body></w:document>"
    );
    zip_package(&[
        (
            "[Content_Types].xml",
            content_types(&[(
                "/word/document.xml",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml",
            )]),
        ),
        ("_rels/.rels", rels(&[("rId1", OFFICE_DOC_REL, "word/document.xml")])),
        ("word/document.xml", document),
    ])
}

/// A PowerPoint deck with one slide per element of `slides`, one paragraph per line.
pub fn pptx(slides: &[&str]) -> Vec<u8> {
    let mut overrides = vec![(
        "/ppt/presentation.xml".to_owned(),
        "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml".to_owned(),
    )];
    let mut parts = Vec::new();
    let mut slide_rels = Vec::new();
    let mut slide_ids = String::new();
    for (i, slide) in slides.iter().enumerate() {
        let n = i + 1;
        overrides.push((
            format!("/ppt/slides/slide{n}.xml"),
            "application/vnd.openxmlformats-officedocument.presentationml.slide+xml".to_owned(),
        ));
        let paras: String = slide
            .lines()
            .map(|l| format!("<a:p><a:r><a:t>{}</a:t></a:r></a:p>", escape(l)))
            .collect();
        parts.push((
            format!("ppt/slides/slide{n}.xml"),
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<p:sld xmlns:a=\"http://schemas.openxmlformats.org/drawingml/2006/main\" xmlns:p=\"http://schemas.openxmlformats.org/presentationml/2006/main\"><p:cSld><p:spTree><p:sp><p:txBody><a:bodyPr/>{paras}</p:txBody></p:sp></p:spTree></p:cSld></p:sld>"
            ),
        ));
        slide_rels.push((
            format!("rId{n}"),
            "http://schemas.openxmlformats.org/officeDocument/2006/relationships/slide".to_owned(),
            format!("slides/slide{n}.xml"),
        ));
        slide_ids.push_str(&format!("<p:sldId id=\"{}\" r:id=\"rId{n}\"/>", 255 + n));
    }
    let presentation = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<p:presentation xmlns:p=\"http://schemas.openxmlformats.org/presentationml/2006/main\" xmlns:r=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships\"><p:sldIdLst>{slide_ids}</p:sldIdLst></p:presentation>"
    );
    let overrides: Vec<(&str, &str)> = overrides.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let slide_rels: Vec<(&str, &str, &str)> = slide_rels
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    let mut all = vec![
        ("[Content_Types].xml".to_owned(), content_types(&overrides)),
        (
            "_rels/.rels".to_owned(),
            rels(&[("rId1", OFFICE_DOC_REL, "ppt/presentation.xml")]),
        ),
        ("ppt/presentation.xml".to_owned(), presentation),
        ("ppt/_rels/presentation.xml.rels".to_owned(), rels(&slide_rels)),
    ];
    all.extend(parts);
    let all: Vec<(&str, String)> = all.iter().map(|(n, x)| (n.as_str(), x.clone())).collect();
    zip_package(&all)
}

/// An Excel workbook with one sheet per `(name, rows)`, every cell a string.
pub fn xlsx(sheets: &[(&str, Vec<Vec<&str>>)]) -> Vec<u8> {
    let mut book = rust_xlsxwriter::Workbook::new();
    for (name, rows) in sheets {
        let sheet = book.add_worksheet();
        let _ = sheet.set_name(*name);
        for (r, row) in rows.iter().enumerate() {
            for (c, cell) in row.iter().enumerate() {
                let _ = sheet.write_string(r as u32, c as u16, *cell);
            }
        }
    }
    book.save_to_buffer().unwrap_or_default()
}

fn content_types(overrides: &[(&str, &str)]) -> String {
    let overrides: String = overrides
        .iter()
        .map(|(part, ct)| format!("<Override PartName=\"{part}\" ContentType=\"{ct}\"/>"))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\"><Default Extension=\"rels\" ContentType=\"{RELS_CT}\"/><Default Extension=\"xml\" ContentType=\"application/xml\"/>{overrides}</Types>"
    )
}

fn rels(rels: &[(&str, &str, &str)]) -> String {
    let rels: String = rels
        .iter()
        .map(|(id, ty, target)| format!("<Relationship Id=\"{id}\" Type=\"{ty}\" Target=\"{target}\"/>"))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">{rels}</Relationships>"
    )
}

fn zip_package(parts: &[(&str, String)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, xml) in parts {
        // Writing to memory cannot fail.
        let _ = zip.start_file(*name, options);
        let _ = zip.write_all(xml.as_bytes());
    }
    zip.finish().map(Cursor::into_inner).unwrap_or_default()
}

/// A stored file: name, type, bytes and the text a reader should get from it.
pub struct Sample {
    /// File name.
    pub name: String,
    /// Media type.
    pub mime: &'static str,
    /// The file's bytes.
    pub content: Vec<u8>,
    /// The text a reader should get (empty for an image).
    pub text: String,
}

/// The kinds of stored file a drive or a page's attachments hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// `Note N.txt`, plain text.
    Text,
    /// `Report N.pdf`, two pages.
    Pdf,
    /// `Guide N.docx`.
    Docx,
    /// `Budget N.xlsx`, one sheet.
    Xlsx,
    /// `Readme N.md`.
    Markdown,
    /// `Deck N.pptx`, two slides.
    Pptx,
    /// `Data N.csv`.
    Csv,
    /// `Page N.html`, with a script the reader must not see.
    Html,
    /// `Photo N.png`, no text.
    Png,
}

impl Stored {
    /// Every kind, in a fixed order (seeds cycle through it).
    pub const ALL: [Stored; 9] = [
        Stored::Text,
        Stored::Pdf,
        Stored::Docx,
        Stored::Xlsx,
        Stored::Markdown,
        Stored::Pptx,
        Stored::Csv,
        Stored::Html,
        Stored::Png,
    ];
}

/// File number `n` of `kind`, a real file of its type holding `line`.
pub fn stored(kind: Stored, n: usize, line: &str) -> Sample {
    use crate::extract::{DOCX_MIME, PDF_MIME, PPTX_MIME, XLSX_MIME};
    let text_file = |name: String, mime: &'static str, text: String| Sample {
        name,
        mime,
        content: text.clone().into_bytes(),
        text,
    };
    let binary = |name: String, mime: &'static str, content: Vec<u8>, text: String| Sample {
        name,
        mime,
        content,
        text,
    };
    match kind {
        Stored::Text => text_file(format!("Note {n:04}.txt"), "text/plain", format!("{line}\nPlain text.")),
        Stored::Pdf => binary(
            format!("Report {n:04}.pdf"),
            PDF_MIME,
            pdf(&[line, "Second page of the report"]),
            format!("{line}\n\nSecond page of the report"),
        ),
        Stored::Docx => binary(
            format!("Guide {n:04}.docx"),
            DOCX_MIME,
            docx(&[line, "A Word document."]),
            format!("{line}\nA Word document."),
        ),
        Stored::Xlsx => binary(
            format!("Budget {n:04}.xlsx"),
            XLSX_MIME,
            xlsx(&[("Budget", vec![vec!["item", "cost"], vec![line, "300"]])]),
            format!("## Budget\nitem,cost\n{line},300"),
        ),
        Stored::Markdown => text_file(
            format!("Readme {n:04}.md"),
            "text/markdown",
            format!("# {line}\n\nMarkdown text."),
        ),
        Stored::Pptx => binary(
            format!("Deck {n:04}.pptx"),
            PPTX_MIME,
            pptx(&[line, "Questions?"]),
            format!("{line}\n\nQuestions?"),
        ),
        Stored::Csv => text_file(format!("Data {n:04}.csv"), "text/csv", format!("id,label\n{n},{line}")),
        Stored::Html => binary(
            format!("Page {n:04}.html"),
            "text/html",
            format!(
                "<!doctype html><html><head><title>Page {n}</title><script>var x=1;</script></head><body><h1>{line}</h1><p>An HTML page.</p></body></html>"
            )
            .into_bytes(),
            format!("# {line}\n\nAn HTML page."),
        ),
        Stored::Png => binary(format!("Photo {n:04}.png"), "image/png", PNG_1X1.to_vec(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    //! Each generated file reads back as the text put in, through [`crate::extract`]:
    //! the extractors and the generators agree on real formats.

    use super::*;
    use crate::extract::{Format, extract};

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn pdf_reads_back() {
        let bytes = pdf(&["Quarterly report\nRevenue grew 12 percent", "Second page"]);
        assert_eq!(Format::sniff(&bytes), Format::Pdf);
        let text = extract(&bytes, Format::Pdf, None).expect("pdf");
        assert_eq!(
            words(&text),
            words("Quarterly report Revenue grew 12 percent Second page"),
            "{text:?}"
        );
    }

    #[test]
    fn docx_reads_back() {
        let bytes = docx(&["Onboarding guide", "Step 1: café & <tea>"]);
        assert_eq!(Format::sniff(&bytes), Format::Docx);
        assert_eq!(
            extract(&bytes, Format::Docx, None).expect("docx"),
            "Onboarding guide\nStep 1: café & <tea>"
        );
    }

    #[test]
    fn pptx_reads_back() {
        let bytes = pptx(&["Roadmap\nQ1 goals", "Thanks"]);
        assert_eq!(Format::sniff(&bytes), Format::Pptx);
        assert_eq!(
            extract(&bytes, Format::Pptx, None).expect("pptx"),
            "Roadmap\nQ1 goals\n\nThanks"
        );
    }

    #[test]
    fn xlsx_reads_back() {
        let bytes = xlsx(&[("Budget", vec![vec!["item", "cost"], vec!["desk, oak", "300"]])]);
        assert_eq!(Format::sniff(&bytes), Format::Spreadsheet);
        assert_eq!(
            extract(&bytes, Format::Spreadsheet, None).expect("xlsx"),
            "## Budget\nitem,cost\n\"desk, oak\",300"
        );
    }

    #[test]
    fn png_has_no_text() {
        assert_eq!(Format::sniff(PNG_1X1), Format::Unsupported);
    }
}

//! Bytes to characters: which charset a text or HTML document is in, and decoding it.
//!
//! The order is the one browsers use (WHATWG "encoding sniffing"): a byte-order
//! mark wins, then the charset the server declared, then (HTML only) a
//! `<meta charset>` in the first 1024 bytes, then UTF-8 if the bytes are valid
//! UTF-8, else windows-1252 (what ISO-8859-1 labels mean on the web).

use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};

/// The `charset` parameter of a `Content-Type` value, if any.
pub fn charset_of_content_type(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

/// Decodes text whose declared charset (if any) is `charset`.
pub fn decode(bytes: &[u8], charset: Option<&str>) -> String {
    decode_with(bytes, charset.and_then(|c| Encoding::for_label(c.as_bytes())))
}

/// Decodes an HTML page: as [`decode`], but a `<meta charset>` (or
/// `http-equiv` Content-Type) near the top counts when the server declared none.
pub fn decode_html(bytes: &[u8], charset: Option<&str>) -> String {
    let declared = charset
        .and_then(|c| Encoding::for_label(c.as_bytes()))
        .or_else(|| meta_charset(&bytes[..bytes.len().min(1024)]));
    decode_with(bytes, declared)
}

fn decode_with(bytes: &[u8], declared: Option<&'static Encoding>) -> String {
    if let Some((bom, len)) = Encoding::for_bom(bytes) {
        return bom.decode_without_bom_handling(&bytes[len..]).0.into_owned();
    }
    let encoding = declared.unwrap_or_else(|| {
        if std::str::from_utf8(bytes).is_ok() {
            UTF_8
        } else {
            WINDOWS_1252
        }
    });
    // A page that claims UTF-16 in a <meta> is ASCII-compatible in fact (WHATWG rule).
    let encoding = encoding.output_encoding();
    encoding.decode_without_bom_handling(bytes).0.into_owned()
}

/// The charset a `<meta charset=...>` or `<meta http-equiv="Content-Type" content="...; charset=...">` names.
fn meta_charset(head: &[u8]) -> Option<&'static Encoding> {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("<meta") {
        rest = &rest[at + 5..];
        let tag = &rest[..rest.find('>').unwrap_or(rest.len())];
        if let Some(pos) = tag.find("charset") {
            let value = tag[pos + "charset".len()..].trim_start();
            if let Some(value) = value.strip_prefix('=') {
                let value = value.trim_start().trim_start_matches(['"', '\'']);
                let end = value
                    .find(|c: char| c == '"' || c == '\'' || c == ';' || c == '/' || c.is_whitespace())
                    .unwrap_or(value.len());
                if let Some(enc) = Encoding::for_label(&value.as_bytes()[..end]) {
                    return Some(enc);
                }
            }
        }
    }
    None
}

/// Whether the start of a file reads as text: no NUL bytes, and few control
/// characters once decoded (tab, line feed, carriage return and form feed are text).
pub(super) fn looks_like_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    if Encoding::for_bom(head).is_some() {
        return true;
    }
    let decoded = decode(head, None);
    let control = decoded
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{c}'))
        .count();
    control * 100 <= decoded.chars().count().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The charset parameter is found whatever its case and quoting.
    #[test]
    fn content_type_charsets() {
        assert_eq!(
            charset_of_content_type("text/html; Charset=\"ISO-8859-1\"").as_deref(),
            Some("ISO-8859-1")
        );
        assert_eq!(
            charset_of_content_type("text/plain;charset=utf-8").as_deref(),
            Some("utf-8")
        );
        assert_eq!(charset_of_content_type("text/plain"), None);
    }

    /// Latin-1 bytes keep their accents when declared, when a <meta> declares
    /// them, and when nothing does (not UTF-8, so windows-1252).
    #[test]
    fn latin1_keeps_its_accents() {
        let bytes = b"caf\xe9 cr\xe8me";
        assert_eq!(decode(bytes, Some("ISO-8859-1")), "café crème");
        assert_eq!(decode(bytes, None), "café crème");
        let page = b"<html><head><meta charset=\"iso-8859-1\"></head><body>caf\xe9</body></html>";
        assert!(decode_html(page, None).contains("café"));
        let equiv = b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=windows-1252\">\x93q\x94";
        assert!(decode_html(equiv, None).contains("\u{201c}q\u{201d}"));
    }

    /// A byte-order mark beats any declaration; valid UTF-8 is UTF-8.
    #[test]
    fn bom_and_utf8() {
        assert_eq!(decode(b"\xef\xbb\xbfh\xc3\xa9", Some("ISO-8859-1")), "hé");
        assert_eq!(decode(b"\xff\xfeh\0i\0", None), "hi");
        assert_eq!(decode("日本語".as_bytes(), None), "日本語");
    }
}

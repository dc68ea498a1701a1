//! Credentials out of everything people read: a URL's password (`scheme://user:PASSWORD@host`)
//! becomes `***` in URLs ([`url`]) and in any text that quotes URLs ([`text`]):
//! error messages, contexts, config problems.
//!
//! Invariant: only the password part of a URL's userinfo changes; the rest of
//! the text is returned byte for byte, so messages stay searchable.

/// `url` with its password, if any, replaced by `***`. Text that is not a URL
/// is cut at its last `@`, since whatever stood before it may be a credential.
pub fn url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.password().is_none() => url.to_owned(),
        Ok(_) => text(url),
        Err(_) => match url.rfind('@') {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_owned(),
        },
    }
}

/// `text` with the password of every URL it quotes replaced by `***`.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at the path, query, fragment, or anything that cannot be in it.
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | ')' | '>' | ',') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at_sign) => {
                let userinfo = &authority[..at_sign];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at_sign..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_and_text_are_redacted() {
        assert_eq!(
            url("redis://default:s3cret@cache:6379/0"),
            "redis://default:***@cache:6379/0"
        );
        assert_eq!(
            url("https://bot:tok@en@wiki.example.com/x"),
            "https://bot:***@wiki.example.com/x"
        );
        assert_eq!(url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(
            url("https://token@h/"),
            "https://token@h/",
            "a user name alone is not a secret we can tell"
        );
        assert_eq!(
            text("error sending request for url (https://u:p@h.example/a?b=1): timed out; see \"http://x:y@z\""),
            "error sending request for url (https://u:***@h.example/a?b=1): timed out; see \"http://x:***@z\""
        );
        assert_eq!(text("no urls here: a@b, c://"), "no urls here: a@b, c://");
        assert_eq!(text("ünïcode https://ä:ö@h ok"), "ünïcode https://ä:***@h ok");
    }
}

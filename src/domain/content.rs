//! The content checks of SPEC §6, shared by the WebSocket and REST paths, in the contract's order:
//! empty → too long → sanitized (and empty again) → links → spam. Length is judged on the text as sent;
//! every later rule judges the visible text of what is stored ([`visible::text`]: tags removed,
//! entities decoded, invisible characters dropped), so markup cannot hide a word, a link or a run of
//! letters from a rule.
//!
//! Markup the sanitizer removes is not judged: `<a href="javascript:…">x</a>` is stored as `x`, which
//! no reader can follow. Refusing it as well would cost a second scan of every message for text that
//! is never shown, and every rule would then need two readings of one message that could disagree.

use std::collections::{HashMap, HashSet};

use super::visible;

/// The configurable rules (`limits.*`, `urls.*`, `spam.*`).
#[derive(Debug, Clone)]
pub struct ContentRules {
    pub max_message_chars: usize,
    /// Links to these domains or their subdomains are refused. ASCII (punycode), as config validation
    /// leaves them; compared case-insensitively.
    pub blocked_domains: Vec<String>,
    /// A run of one character longer than this is spam; 0 turns the rule off.
    pub max_repeated_chars: usize,
    /// More links than this is spam; 0 turns the rule off.
    pub max_urls: usize,
    /// Whole words or phrases that make a message spam, case-insensitively.
    pub blocked_words: Vec<String>,
}

impl Default for ContentRules {
    fn default() -> Self {
        Self {
            max_message_chars: 1000,
            blocked_domains: Vec::new(),
            max_repeated_chars: 30,
            max_urls: 5,
            blocked_words: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentRejection {
    #[error("the message is empty")]
    Empty,
    #[error("the message is longer than {max} characters")]
    TooLong { max: usize },
    #[error("{0}")]
    UrlBlocked(String),
    #[error("{0}")]
    Spam(String),
}

impl ContentRejection {
    pub fn code(&self) -> &'static str {
        match self {
            ContentRejection::Empty => "empty_message",
            ContentRejection::TooLong { .. } => "message_too_long",
            ContentRejection::UrlBlocked(_) => "url_blocked",
            ContentRejection::Spam(_) => "spam_detected",
        }
    }
}

const ALLOWED_TAGS: [&str; 5] = ["b", "i", "em", "strong", "u"];

pub struct ContentChecker {
    rules: ContentRules,
    sanitizer: ammonia::Builder<'static>,
    blocked_phrases: Vec<Vec<String>>,
}

impl ContentChecker {
    pub fn new(rules: ContentRules) -> Self {
        let mut sanitizer = ammonia::Builder::empty();
        sanitizer
            .add_tags(ALLOWED_TAGS)
            .clean_content_tags(HashSet::from(["script", "style"]))
            // `Builder::empty` still allows `lang` and `title` everywhere: allow no attribute at all.
            .generic_attributes(HashSet::new())
            .tag_attributes(HashMap::new())
            .url_schemes(HashSet::new())
            .link_rel(None);
        let blocked_phrases = rules
            .blocked_words
            .iter()
            .map(|phrase| {
                words(&phrase.to_lowercase())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|words| !words.is_empty())
            .collect();
        Self {
            rules,
            sanitizer,
            blocked_phrases,
        }
    }

    /// Runs every check; answers the text to store.
    pub fn check(&self, text: &str) -> Result<String, ContentRejection> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ContentRejection::Empty);
        }
        let max = self.rules.max_message_chars;
        // A text has no more characters than bytes: most messages are judged without counting.
        if text.len() > max && text.chars().count() > max {
            return Err(ContentRejection::TooLong { max });
        }
        // Most messages are plain words: parsing them as HTML would give them back unchanged.
        let plain = is_plain(text);
        let mut stored = if plain {
            text.to_owned()
        } else {
            merge_formatting(&self.sanitizer.clean(text).to_string())
        };
        settle(&mut stored);
        let visible = if plain {
            std::borrow::Cow::Borrowed(stored.as_str())
        } else {
            std::borrow::Cow::Owned(visible::text(&stored))
        };
        if visible::is_blank(&visible) {
            return Err(ContentRejection::Empty);
        }
        let links = self.check_links(&visible)?;
        self.check_spam(&visible, links)?;
        Ok(stored)
    }

    /// Refuses dangerous, credentialed or blocked links and blocked hosts; answers how many links the
    /// text has.
    fn check_links(&self, visible: &str) -> Result<usize, ContentRejection> {
        let mut links = 0;
        let mut from = 0;
        while let Some((link, end)) = Link::next(visible, from) {
            links += 1;
            from = end;
            self.check_link(&link)?;
        }
        if !self.rules.blocked_domains.is_empty() {
            self.check_named_hosts(visible)?;
        }
        Ok(links)
    }

    fn check_link(&self, link: &Link<'_>) -> Result<(), ContentRejection> {
        let target = link.text.trim_end_matches(|c: char| {
            matches!(
                c,
                '(' | ')' | '[' | ']' | '{' | '}' | ',' | ';' | ':' | '!' | '?' | '.' | '\''
            )
        });
        let url = match link.scheme {
            Some(scheme)
                if !scheme.eq_ignore_ascii_case("http")
                    && !scheme.eq_ignore_ascii_case("https") =>
            {
                return Err(ContentRejection::UrlBlocked(refused_scheme(scheme)));
            }
            // WHATWG parsing reads `https:\\host` and `https:host` as `https://host`, as browsers do.
            Some(_) => url::Url::parse(target).map_err(|_| {
                ContentRejection::UrlBlocked("a link in the message is malformed".into())
            })?,
            None => match url::Url::parse(&format!("http://{target}")) {
                Ok(url) => url,
                // `www.` followed by what no browser reads as a host leads nowhere.
                Err(_) => return Ok(()),
            },
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ContentRejection::UrlBlocked(
                "links must not carry a user name or password".into(),
            ));
        }
        match url.host_str() {
            Some(host) if self.is_blocked(host) => Err(blocked_domain()),
            _ => Ok(()),
        }
    }

    /// A blocked domain named anywhere (`evil.example/x`, `bob@evil.example`, inside another link) is
    /// refused too: readers type it in, and many clients turn it into a link.
    fn check_named_hosts(&self, visible: &str) -> Result<(), ContentRejection> {
        for name in visible.split(|c: char| !(c.is_alphanumeric() || c == '.' || c == '-')) {
            let name = name.trim_matches(['.', '-']);
            if !name.contains('.') {
                continue;
            }
            let blocked = if name.is_ascii() {
                self.is_blocked(name)
            } else {
                // `ｅｖｉｌ.example` and IDNs: compare the form a browser resolves.
                matches!(url::Host::parse(name), Ok(url::Host::Domain(host)) if self.is_blocked(&host))
            };
            if blocked {
                return Err(blocked_domain());
            }
        }
        Ok(())
    }

    /// Whether `host` is a blocked domain or one of its subdomains.
    fn is_blocked(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').as_bytes();
        self.rules.blocked_domains.iter().any(|domain| {
            host.len().checked_sub(domain.len()).is_some_and(|at| {
                host[at..].eq_ignore_ascii_case(domain.as_bytes())
                    && (at == 0 || host[at - 1] == b'.')
            })
        })
    }

    fn check_spam(&self, visible: &str, links: usize) -> Result<(), ContentRejection> {
        let max_run = self.rules.max_repeated_chars;
        if max_run > 0 && longest_run(visible) > max_run {
            return Err(ContentRejection::Spam(format!(
                "the same character is repeated more than {max_run} times in a row"
            )));
        }
        let max_links = self.rules.max_urls;
        if max_links > 0 && links > max_links {
            return Err(ContentRejection::Spam(format!(
                "the message has more than {max_links} links"
            )));
        }
        if !self.blocked_phrases.is_empty() {
            let lower = visible.to_lowercase();
            let text_words: Vec<&str> = words(&lower).collect();
            let hit = self.blocked_phrases.iter().any(|phrase| {
                text_words
                    .windows(phrase.len())
                    .any(|window| window.iter().eq(phrase.iter()))
            });
            if hit {
                return Err(ContentRejection::Spam(
                    "the message contains a blocked word".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A link in the visible text, as SPEC §6 defines one: `scheme:` (three or more letters, digits,
/// `+ - .`, starting with a letter) followed by a non-space, or `www.…`. It ends at a space or at a
/// character that no link holds unescaped.
struct Link<'a> {
    /// From the scheme (or `www.`) on.
    text: &'a str,
    /// `None` for `www.…`, read as `http://www.…`.
    scheme: Option<&'a str>,
}

impl<'a> Link<'a> {
    /// The first link at or after byte `from` (a character boundary), and the byte where it ends.
    fn next(text: &'a str, from: usize) -> Option<(Link<'a>, usize)> {
        let bytes = text.as_bytes();
        let mut at = from;
        while at < bytes.len() {
            if !is_scheme_byte(bytes[at]) {
                at += 1;
                continue;
            }
            // Only ASCII bytes are scheme bytes, so a run starts and ends on character boundaries.
            let run_end = at
                + bytes[at..]
                    .iter()
                    .take_while(|b| is_scheme_byte(**b))
                    .count();
            if let Some((start, scheme)) = link_in_run(text, at, run_end) {
                let end = text[start..]
                    .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '`'))
                    .map_or(text.len(), |length| start + length);
                let link = Link {
                    text: &text[start..end],
                    scheme,
                };
                return Some((link, end));
            }
            at = run_end;
        }
        None
    }
}

/// Where a link starts in the run of scheme characters `text[run..run_end]`, and its scheme.
fn link_in_run(text: &str, run: usize, run_end: usize) -> Option<(usize, Option<&str>)> {
    let bytes = text.as_bytes();
    let followed = |at: usize| {
        text[at..]
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace())
    };
    let www_at = |at: usize| {
        bytes[at..run_end]
            .get(..4)
            .is_some_and(|start| start.eq_ignore_ascii_case(b"www."))
            && text[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric())
            && followed(at + 4)
    };
    if let Some(letter) = bytes[run..run_end].iter().position(u8::is_ascii_alphabetic) {
        let start = run + letter;
        let is_scheme =
            run_end - start >= 3 && bytes.get(run_end) == Some(&b':') && followed(run_end + 1);
        // `www.example.com:8080` is a host and a port, not a scheme named `www.example.com`.
        if is_scheme && !www_at(start) {
            return Some((start, Some(&text[start..run_end])));
        }
    }
    (run..run_end)
        .find(|&at| www_at(at))
        .map(|start| (start, None))
}

fn is_scheme_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.')
}

fn refused_scheme(scheme: &str) -> String {
    // A scheme is the sender's text: echo only one short enough to be a real one.
    if scheme.len() > 32 {
        return "links with that scheme are not allowed; use http or https".into();
    }
    format!(
        "links with the {}: scheme are not allowed; use http or https",
        scheme.to_ascii_lowercase()
    )
}

fn blocked_domain() -> ContentRejection {
    ContentRejection::UrlBlocked("links to that domain are not allowed".into())
}

/// Text that the sanitizer gives back as it is and that shows as it is: printable ASCII, spaces,
/// tabs and line feeds, and none of the characters that start markup (`<`, `>`, `&`).
fn is_plain(text: &str) -> bool {
    text.bytes().all(|b| {
        (b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'&'))
            || matches!(b, b' ' | b'\t' | b'\n')
    })
}

/// Writes sanitized markup so that each piece of text is wrapped in each allowed tag at most once,
/// and a tag is closed and opened again only where the formatting of the text changes.
///
/// The HTML parser reopens every formatting element still active after a block ends (`<p>`, `<li>`,
/// …): `<b a=1><b a=2>…<b a=k>` followed by n paragraphs becomes k × n tags once the attributes and
/// blocks are gone, so a text of 1,000 characters could be stored as hundreds of kilobytes. Stored tags
/// carry no attributes, so a tag inside one of its own name and an empty element show nothing: each
/// piece of text needs at most one of each allowed tag around it.
///
/// What that bounds: a piece of text is at most 6 times longer stored (U+00A0 is `&nbsp;`), and
/// before it come at most 47 characters of tags (all five closed, all five opened). Every piece but
/// the first follows a tag of at least 3 characters in what was sent, so a text of n characters is
/// stored in at most (53 n + 263) / 4: [`tests::assert_storable`] holds every stored text to it.
///
/// Made for ammonia's output, in which every `<` starts an allowed tag without attributes and the tags
/// nest properly.
fn merge_formatting(sanitized: &str) -> String {
    let mut merged = String::with_capacity(sanitized.len());
    // The tags open around the current text in the sanitized tree, and in `merged`.
    let mut open: Vec<&str> = Vec::new();
    let mut written: Vec<&str> = Vec::new();
    let mut rest = sanitized;
    while let Some(start) = rest.find('<') {
        let Some(length) = rest[start..].find('>') else {
            break;
        };
        if start > 0 {
            write_tags(&mut merged, &mut written, &open);
            merged.push_str(&rest[..start]);
        }
        let tag = &rest[start + 1..start + length];
        match tag.strip_prefix('/') {
            Some(name) => {
                if let Some(at) = open.iter().rposition(|open| *open == name) {
                    open.remove(at);
                }
            }
            None => open.push(tag),
        }
        rest = &rest[start + length + 1..];
    }
    if !rest.is_empty() {
        write_tags(&mut merged, &mut written, &open);
        merged.push_str(rest);
    }
    write_tags(&mut merged, &mut written, &[]);
    merged
}

/// Closes and opens tags in `merged` so that the text written next is inside each tag of `open` once.
fn write_tags<'a>(merged: &mut String, written: &mut Vec<&'a str>, open: &[&'a str]) {
    let mut wanted: Vec<&str> = Vec::with_capacity(ALLOWED_TAGS.len());
    for name in open {
        if !wanted.contains(name) {
            wanted.push(name);
        }
    }
    let kept = written
        .iter()
        .zip(&wanted)
        .take_while(|(written, wanted)| written == wanted)
        .count();
    for name in written.drain(kept..).rev() {
        merged.push_str("</");
        merged.push_str(name);
        merged.push('>');
    }
    for name in &wanted[kept..] {
        merged.push('<');
        merged.push_str(name);
        merged.push('>');
        written.push(name);
    }
}

/// Makes the sanitized text what sanitizing it again gives, so stored text passes the checks unchanged:
/// trimmed, and without what the HTML parser changes on a second reading (a CR that came from `&#13;`
/// is read as a line break, a byte order mark at the start is dropped).
fn settle(text: &mut String) {
    if text.contains('\r') {
        *text = text.replace("\r\n", "\n").replace('\r', "\n");
    }
    text.truncate(text.trim_end().len());
    let start = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}');
    let leading = text.len() - start.len();
    text.drain(..leading);
}

fn longest_run(text: &str) -> usize {
    let mut longest = 0;
    let mut current = 0;
    let mut previous = None;
    for c in text.chars() {
        current = if Some(c) == previous { current + 1 } else { 1 };
        previous = Some(c);
        longest = longest.max(current);
    }
    longest
}

/// The words of a text, split at anything that is not a letter or digit.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn checker() -> ContentChecker {
        ContentChecker::new(ContentRules {
            blocked_domains: vec!["evil.example".into()],
            blocked_words: vec!["casino".into(), "free money".into()],
            ..ContentRules::default()
        })
    }

    fn code(text: &str) -> &'static str {
        match checker().check(text) {
            Ok(_) => "ok",
            Err(rejection) => rejection.code(),
        }
    }

    #[test]
    fn keeps_the_allowed_tags_and_nothing_else() {
        let check = |text: &str| checker().check(text).unwrap();
        assert_eq!(
            check("<b>bold</b> and <i>it</i> <em>e</em> <strong>s</strong> <u>u</u>"),
            "<b>bold</b> and <i>it</i> <em>e</em> <strong>s</strong> <u>u</u>"
        );
        assert_eq!(check("<b onclick=\"steal()\" class=x>hi</b>"), "<b>hi</b>");
        assert_eq!(check("<b title=x lang=en>hi</b>"), "<b>hi</b>");
        assert_eq!(
            check("<i title=\"t\">a</i> <u lang=fr>b</u>"),
            "<i>a</i> <u>b</u>"
        );
        assert_eq!(check("<script>alert(1)</script>hi"), "hi");
        assert_eq!(check("<style>p{}</style>hi"), "hi");
        assert_eq!(check("<a href=\"https://ok.example\">link</a>"), "link");
        assert_eq!(check("<img src=x onerror=alert(1)>caption"), "caption");
        assert_eq!(check("a < b"), "a &lt; b");
        assert_eq!(check("  padded  "), "padded");
        assert_eq!(check("héllo 👋 日本語"), "héllo 👋 日本語");
    }

    #[test]
    fn empty_before_and_after_sanitizing() {
        for text in [
            "",
            "   ",
            "\n\t",
            "<script>alert(1)</script>",
            "<b></b>",
            "<style>x</style> ",
        ] {
            assert_eq!(code(text), "empty_message", "{text:?}");
        }
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let multi_byte = |n: usize| "éß日本語😀🎉ü".chars().cycle().take(n).collect::<String>();
        assert_eq!(multi_byte(1000).len(), 2_875, "well over 1000 bytes");
        assert_eq!(code(&multi_byte(1000)), "ok");
        assert_eq!(code(&multi_byte(1001)), "message_too_long");
        // Length is judged before spam: a long run of one letter is too long, not spam.
        assert_eq!(code(&"a".repeat(1001)), "message_too_long");
    }

    #[test]
    fn refuses_dangerous_links() {
        for text in [
            "click javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html;base64,PHNjcmlwdD4=",
            "vbscript:msgbox",
            "file:///etc/passwd",
            "ftp://files.example/x",
            "http://user:secret@example.com/",
            "https://admin@example.com",
            "see https://evil.example/page",
            "see https://WWW.Evil.Example./page",
            "https://a.b.evil.example",
            "www.evil.example/path",
            "mail me at bob@evil.example",
            "evil.example",
            "&#106;avascript:alert(1)",
            "see evil&#46;example today",
            "www.evil.example:8080/x",
            "ask ab:evil.example",
            "evil.example,https://ok.example",
            "ｅｖｉｌ.example",
            "https://evil%2Eexample/x",
            "https://ｅｖｉｌ.example/x",
            "www.user:pw@ok.example",
        ] {
            assert_eq!(code(text), "url_blocked", "{text:?}");
        }
    }

    #[test]
    fn lets_ordinary_text_and_links_through() {
        for text in [
            "https://notevil.example/page",
            "https://evil.example.org/",
            "see www.teachly.example and http://docs.example/a?b=1&c=2",
            "ratio 3:1 at 10:30, e.g. this",
            "a:b c:d",
            "the file.txt is attached",
            "data is fine, javascript is fine too",
            "www.teachly.example:8080/lesson",
            "https://en.wikipedia.org/wiki/Special:Random",
            "news about evil.examples and notevil.example",
            "Input data: 42",
            "File: report.pdf",
            "JavaScript: The Good Parts",
        ] {
            assert_eq!(code(text), "ok", "{text:?}");
        }
    }

    #[test]
    fn spam_rules() {
        assert_eq!(code(&format!("so{}ng", "o".repeat(29))), "ok");
        assert_eq!(code(&format!("s{}ng", "o".repeat(31))), "spam_detected");
        assert_eq!(code(&"!".repeat(31)), "spam_detected");
        let links = |n: usize| {
            (0..n)
                .map(|i| format!("https://site{i}.example"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(code(&links(5)), "ok");
        assert_eq!(code(&links(6)), "spam_detected");
        assert_eq!(code("Visit our CASINO now"), "spam_detected");
        assert_eq!(code("casinos are not the word"), "ok");
        assert_eq!(code("get FREE   money today"), "spam_detected");
        assert_eq!(code("free lunch, money later"), "ok");
    }

    #[test]
    fn rules_can_be_turned_off() {
        let checker = ContentChecker::new(ContentRules {
            max_repeated_chars: 0,
            max_urls: 0,
            ..ContentRules::default()
        });
        assert!(checker.check(&"z".repeat(500)).is_ok());
        let many = (0..20)
            .map(|i| format!("https://s{i}.example"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(checker.check(&many).is_ok());
    }

    #[test]
    fn rules_judge_the_text_as_stored_and_shown() {
        for text in [
            "c&#97;sino",
            "c&#x61;sino tonight",
            "cas<b></b>ino",
            "CAS<i>IN</i>O",
            "cas\u{200B}ino",
            "cas\u{AD}ino",
            "ca\u{2060}s\u{FEFF}i\u{200E}no",
            "free&nbsp;money",
            "free <b>money</b>",
        ] {
            assert_eq!(code(text), "spam_detected", "{text:?}");
        }
        assert_eq!(code(&"&#97;".repeat(31)), "spam_detected");
        let split_run = format!("{0}<b></b>{0}", "a".repeat(20));
        assert_eq!(code(&split_run), "spam_detected");
        assert_eq!(code(&"a\u{200B}".repeat(31)), "spam_detected");
        assert_eq!(code(&"&#97;".repeat(30)), "ok");
    }

    #[test]
    fn every_scheme_is_a_link() {
        for text in [
            "mailto:x@y.example",
            "tel:+123",
            "ms-msdt:/id PCWDiagnostic",
            "search-ms:query=x",
            "MAILTO:x@y.example",
            "open ssh:host now",
            "view-source:https://ok.example",
            "<b>mail</b>to:x@y.example",
            "metadata:value",
            "(mailto:x@y.example)",
            "-javascript:alert(1)",
        ] {
            assert_eq!(code(text), "url_blocked", "{text:?}");
        }
    }

    #[test]
    fn a_backslash_in_a_link_is_a_slash() {
        for text in [
            "https:\\\\evil.example/x",
            "https:/\\evil.example",
            "http:evil.example",
            "HTTPS:\\\\WWW.EVIL.EXAMPLE",
            "www.evil.example\\x",
            "https://ev<b></b>il.example/x",
            "https://evil\u{200B}.example/x",
        ] {
            assert_eq!(code(text), "url_blocked", "{text:?}");
        }
        let links = (0..6)
            .map(|i| format!("https:\\\\site{i}.example"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(code(&links), "spam_detected");
    }

    #[test]
    fn blank_once_decoded_is_empty() {
        for text in [
            "&nbsp;",
            "&nbsp; &nbsp;",
            "<b>&nbsp;</b>",
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
            "\u{AD}",
            "\u{202E}\u{2066}",
            "\u{3164}",
            "\u{2800}",
            "\u{115F}\u{1160}",
            "\u{FFA0}",
            "\u{E0041}",
            "&#8203;",
            "<i>\u{200B}</i>",
        ] {
            assert_eq!(code(text), "empty_message", "{text:?}");
        }
    }

    #[test]
    fn prose_with_colons_is_no_link() {
        for text in [
            "3:2",
            "10:30",
            "a:b",
            "won 3:2 at 10:30, see you at 7:45!",
            "JavaScript: The Good Parts",
            "Input data: 42",
            "File: report.pdf",
            "Re: homework",
            "it ends with a colon:",
            "the ratio is 16:9 (or 4:3)",
        ] {
            assert_eq!(code(text), "ok", "{text:?}");
        }
    }

    #[test]
    fn markup_the_sanitizer_removes_is_not_judged() {
        // What is stored is `x`: judging what no reader will ever see refuses nothing dangerous.
        assert_eq!(
            checker().check("<a href=\"javascript:alert(1)\">x</a>"),
            Ok("x".to_owned())
        );
    }

    /// The rules of `checker()` without the length rule: that one judges the text as sent, and what is
    /// stored can be longer (`&` is stored as `&amp;`).
    fn checker_of_any_length() -> ContentChecker {
        ContentChecker::new(ContentRules {
            max_message_chars: usize::MAX,
            blocked_domains: vec!["evil.example".into()],
            blocked_words: vec!["casino".into(), "free money".into()],
            ..ContentRules::default()
        })
    }

    /// What every accepted text must come to: stored text that passes the rules again unchanged, holds
    /// only the allowed tags without attributes, and is at most a few times longer than what was sent.
    fn assert_storable(text: &str) -> Result<(), TestCaseError> {
        let checker = checker_of_any_length();
        let Ok(stored) = checker.check(text) else {
            return Ok(());
        };
        prop_assert_eq!(checker.check(&stored), Ok(stored.clone()), "checked again");
        prop_assert!(!stored.trim().is_empty());
        prop_assert!(!stored.contains('\0'), "PostgreSQL text cannot hold NUL");
        let mut tags = stored.split('<').skip(1);
        prop_assert!(
            tags.all(|tag| {
                tag.split_once('>').is_some_and(|(tag, _)| {
                    ALLOWED_TAGS.contains(&tag.strip_prefix('/').unwrap_or(tag))
                })
            }),
            "a tag other than {ALLOWED_TAGS:?}, or with attributes, in {stored:?}"
        );
        // The bound `merge_formatting` proves.
        prop_assert!(
            4 * stored.chars().count() <= 53 * text.chars().count() + 263,
            "{stored:?}"
        );
        Ok(())
    }

    #[test]
    fn reopened_formatting_is_stored_once() {
        // 60 bold elements the parser tells apart by their attributes, and 120 paragraphs: each
        // paragraph's text was wrapped in all 60 again, 7 bytes each: 963 characters were stored as
        // 50,940 bytes.
        let opened: String = (10..70).map(|n| format!("<b a={n}>")).collect();
        let paragraphs: String = (0..120).map(|n| format!("<p>{}", n % 10)).collect();
        let text = format!("<p>{opened}{paragraphs}");
        assert!(text.chars().count() <= 1000);
        let stored = checker().check(&text).unwrap();
        let digits: String = (0..120).map(|n| char::from(b'0' + n % 10)).collect();
        assert_eq!(stored, format!("<b>{digits}</b>"));
        assert_eq!(
            checker().check("<b><i>x<p>y</i>z</b><u></u><em> </em>w"),
            Ok("<b><i>xy</i>z</b><em> </em>w".to_owned())
        );
    }

    /// Formatting opened inside a block and then many blocks with text, the markup that makes the
    /// HTML parser reopen every formatting element still active, mixed with formatting closed out of
    /// order, tables, markers and entities.
    fn reopening_markup() -> impl Strategy<Value = String> {
        let opening = "<(b|i|em|strong|u|s|code|font)( x=[0-9]{1,2})?>";
        let opened = prop::collection::vec(
            prop_oneof![8 => opening, 1 => Just("<p>".to_owned())],
            0..60,
        );
        let piece = prop_oneof![
            12 => "<p>[a-z ]{1,2}",
            1 => "<(li|h1|button)>[a-z ]{1,2}",
            1 => opening,
            1 => "</(b|i|em|strong|u|a|s|code|font|nobr)>",
            1 => "</(b|i|em|strong|u)>[a-z]<(b|i|em|strong|u)>",
            1 => "</?(div|blockquote|table|tr|td|marquee|object|ul|pre)>[a-z ]{0,2}",
            1 => "&(amp|lt|nbsp);",
        ];
        (opened, prop::collection::vec(piece, 0..150))
            .prop_map(|(opened, pieces)| format!("<p>{}{}", opened.concat(), pieces.concat()))
    }

    /// Markup, entities and link-like pieces, more often than random text would hold them.
    fn markup_heavy() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-zA-Z0-9 ]{1,6}",
            "</?(b|i|em|strong|u|a|p|div|script|style|img)( [a-z]{1,6}(=[\"']?[a-z:/]{0,8}[\"']?)?)?/?>",
            "&(amp|lt|gt|quot|nbsp|apos|shy|period|colon|ZeroWidthSpace|bogus);?",
            "&#(x[0-9a-fA-F]{1,6}|[0-9]{1,7});?",
            "[a-z]{1,4}:[a-z/\\\\]{0,4}",
            Just("www.".to_owned()),
            "[<>&:;/\\\\\"'`.]",
            "[\u{a0}\u{ad}\u{200b}-\u{200f}\u{2060}\u{feff}\u{3164}\u{2800}\u{202e}]",
            "<!--[a-z ]{0,5}-->",
        ];
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    /// `target` spelled with entities, case changes, empty allowed tags and invisible characters.
    fn disguised(target: &'static str) -> impl Strategy<Value = String> {
        let spelling = prop_oneof![Just(0u8), Just(1), Just(2), Just(3), Just(4)];
        let filler = prop_oneof![
            Just(""),
            Just(""),
            Just("<b></b>"),
            Just("<i></i>"),
            Just("<em></em>"),
            Just("<strong></strong>"),
            Just("<u></u>"),
            Just("</b>"),
            Just("<i>"),
            Just("\u{200B}"),
            Just("\u{200C}"),
            Just("\u{200D}"),
            Just("\u{2060}"),
            Just("\u{FEFF}"),
            Just("\u{AD}"),
            Just("\u{200E}"),
            Just("\u{202E}"),
            Just("\u{2066}"),
            Just("\u{E0020}"),
            Just("&shy;"),
            Just("&#8203;"),
            Just("&#x200d;"),
            Just("&ZeroWidthSpace;"),
            Just("&NoBreak;"),
        ];
        prop::collection::vec((spelling, filler), target.chars().count()).prop_map(move |ways| {
            let mut text = String::new();
            for (c, (spelling, filler)) in target.chars().zip(ways) {
                match (spelling, c) {
                    (0, c) => text.push(c),
                    (1, c) => text.push(c.to_ascii_uppercase()),
                    (2, c) => text.push_str(&format!("&#{};", u32::from(c))),
                    (3, c) => text.push_str(&format!("&#x{:X};", u32::from(c))),
                    (_, '.') => text.push_str("&period;"),
                    (_, c) => text.push_str(&format!("&#0{};", u32::from(c))),
                }
                text.push_str(filler);
            }
            text
        })
    }

    proptest! {
        #[test]
        fn plain_text_is_what_the_sanitizer_gives_back(text in "[ -%'-;=?-~\t\n]{0,300}") {
            let trimmed = text.trim();
            prop_assume!(is_plain(trimmed));
            let checker = checker();
            let mut sanitized = checker.sanitizer.clean(trimmed).to_string();
            settle(&mut sanitized);
            prop_assert_eq!(&sanitized, trimmed);
            prop_assert_eq!(visible::text(&sanitized), trimmed);
        }

        #[test]
        fn what_is_stored_passes_the_rules_again(text in "(.|\\x00){0,300}") {
            assert_storable(&text)?;
        }

        #[test]
        fn stored_markup_passes_the_rules_again(text in markup_heavy()) {
            assert_storable(&text)?;
        }

        #[test]
        fn reopened_markup_passes_the_rules_again(text in reopening_markup()) {
            assert_storable(&text)?;
        }

        #[test]
        fn a_disguised_blocked_word_is_spam(
            word in disguised("casino"),
            before in "|win at the |\\(|<b>",
            after in "| now|!|\\)",
        ) {
            let text = format!("{before}{word}{after}");
            prop_assert_eq!(code(&text), "spam_detected", "{:?}", text);
        }

        #[test]
        fn a_disguised_blocked_domain_is_refused(
            domain in disguised("evil.example"),
            form in prop::sample::select(vec![
                "{}", "see {}/page", "https://{}/x", "https:\\\\{}", "http:{}", "www.{}", "bob@{}",
                "<b>https://</b>{}",
            ]),
        ) {
            let text = form.replace("{}", &domain);
            prop_assert_eq!(code(&text), "url_blocked", "{:?}", text);
        }

        #[test]
        fn times_and_ratios_are_no_links(
            pieces in prop::collection::vec(prop_oneof![
                "[A-Za-z]{1,10}",
                "[0-9]{1,2}:[0-9]{2}(am|pm|h)?",
                "[0-9]{1,2}:[0-9]{1,2}",
                "[A-Za-z]{1,10}: [A-Za-z0-9]{1,6}",
            ], 1..12),
            separator in prop::sample::select(vec![" ", ", ", ". ", " (", ") ", " - ", "! "]),
        ) {
            let text = pieces.join(separator);
            let checker = ContentChecker::new(ContentRules::default());
            let stored = checker.check(&text);
            prop_assert!(stored.is_ok(), "{:?}: {:?}", text, stored);
            let links = checker.check_links(&visible::text(&text));
            prop_assert_eq!(links, Ok(0), "{:?}", text);
        }

        #[test]
        fn never_panics_and_never_lets_markup_through(text in "(.|\\x00){0,300}") {
            if let Ok(stored) = checker().check(&text) {
                let lower = stored.to_lowercase();
                prop_assert!(!lower.contains("<script") && !lower.contains("<style"));
                prop_assert!(!stored.trim().is_empty());
                prop_assert!(!stored.contains('\0'), "PostgreSQL text cannot hold NUL");
                for tag in stored.split('<').skip(1) {
                    let name: String = tag.trim_start_matches('/').chars().take_while(|c| *c != '>').collect();
                    prop_assert!(ALLOWED_TAGS.contains(&name.as_str()), "tag {name:?} in {stored:?}");
                }
            }
        }

        #[test]
        fn markup_like_input_is_safe(body in "[a-z <>/=\"'&;:()]{0,200}") {
            let text = format!("<b onclick=x>{body}</b><script>{body}</script>");
            if let Ok(stored) = checker().check(&text) {
                prop_assert!(!stored.contains("onclick"));
                prop_assert!(!stored.to_lowercase().contains("<script"));
            }
        }
    }
}

//! The content checks of SPEC §6, shared by the WebSocket and REST paths, in the contract's order:
//! empty → too long → sanitized (and empty again) → links → spam. Links and spam are judged on the text
//! as the sender wrote it (stricter than judging the sanitized copy, which has `&amp;` in every URL);
//! what is stored is the sanitized text.

use std::collections::HashSet;

/// The configurable rules (`limits.*`, `urls.*`, `spam.*`).
#[derive(Debug, Clone)]
pub struct ContentRules {
    pub max_message_chars: usize,
    /// Links to these domains or their subdomains are refused.
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
const DANGEROUS_SCHEMES: [&str; 4] = ["javascript:", "data:", "vbscript:", "file:"];

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
            .tag_attributes(std::collections::HashMap::new())
            .url_schemes(HashSet::new())
            .link_rel(None);
        let blocked_phrases = rules
            .blocked_words
            .iter()
            .map(|phrase| words(phrase))
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
        if text.chars().count() > max {
            return Err(ContentRejection::TooLong { max });
        }
        let sanitized = self.sanitizer.clean(text).to_string();
        let sanitized = sanitized.trim();
        if visible_text(sanitized).trim().is_empty() {
            return Err(ContentRejection::Empty);
        }
        // Entities such as `&#106;avascript:` only become a link once decoded: check both forms.
        let visible = decode_entities(&visible_text(sanitized));
        let links = self.check_links(text)?.max(self.check_links(&visible)?);
        self.check_spam(text, links)?;
        Ok(sanitized.to_owned())
    }

    /// Refuses dangerous, credentialed or blocked links; answers how many links the text has.
    fn check_links(&self, text: &str) -> Result<usize, ContentRejection> {
        let mut links = 0;
        for token in
            text.split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\'' | '`'))
        {
            let token = token.trim_matches(|c: char| {
                matches!(
                    c,
                    '(' | ')' | '[' | ']' | '{' | '}' | ',' | ';' | '!' | '?' | '.'
                )
            });
            if token.is_empty() {
                continue;
            }
            let lower = token.to_lowercase();
            if let Some(scheme) = dangerous_scheme(&lower) {
                return Err(ContentRejection::UrlBlocked(format!(
                    "links with the {scheme} scheme are not allowed"
                )));
            }
            match Link::find(&lower) {
                Some(Link::WithScheme { scheme, url }) => {
                    links += 1;
                    if !matches!(scheme.as_str(), "http" | "https") {
                        return Err(ContentRejection::UrlBlocked(format!(
                            "links with the {scheme}: scheme are not allowed; use http or https"
                        )));
                    }
                    let parsed = url::Url::parse(&url).map_err(|_| {
                        ContentRejection::UrlBlocked("a link in the message is malformed".into())
                    })?;
                    if !parsed.username().is_empty() || parsed.password().is_some() {
                        return Err(ContentRejection::UrlBlocked(
                            "links must not carry a user name or password".into(),
                        ));
                    }
                    self.check_host(parsed.host_str())?;
                }
                Some(Link::Www(url)) => {
                    links += 1;
                    self.check_host(
                        url::Url::parse(&url)
                            .ok()
                            .as_ref()
                            .and_then(url::Url::host_str),
                    )?;
                }
                Some(Link::BareHost(url)) => {
                    self.check_host(
                        url::Url::parse(&url)
                            .ok()
                            .as_ref()
                            .and_then(url::Url::host_str),
                    )?;
                }
                None => {}
            }
        }
        Ok(links)
    }

    fn check_host(&self, host: Option<&str>) -> Result<(), ContentRejection> {
        let Some(host) = host else { return Ok(()) };
        let host = host.trim_end_matches('.');
        let blocked = self.rules.blocked_domains.iter().any(|domain| {
            host == domain
                || host
                    .strip_suffix(domain.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        });
        if blocked {
            return Err(ContentRejection::UrlBlocked(
                "links to that domain are not allowed".into(),
            ));
        }
        Ok(())
    }

    fn check_spam(&self, text: &str, links: usize) -> Result<(), ContentRejection> {
        let max_run = self.rules.max_repeated_chars;
        if max_run > 0 && longest_run(text) > max_run {
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
            let text_words = words(text);
            let hit = self.blocked_phrases.iter().any(|phrase| {
                text_words
                    .windows(phrase.len())
                    .any(|window| window == phrase.as_slice())
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

/// A link found in one whitespace-separated token (already lowercased).
enum Link {
    /// `scheme://…`; `url` starts at the scheme.
    WithScheme { scheme: String, url: String },
    /// `www.…`, read as `http://www.…`.
    Www(String),
    /// `example.com/…`, read as `http://example.com/…`: checked against blocked domains, not counted.
    BareHost(String),
}

impl Link {
    fn find(token: &str) -> Option<Link> {
        if let Some(separator) = token.find("://") {
            let before = &token[..separator];
            let start = before
                .char_indices()
                .rev()
                .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
                .map_or(0, |(i, c)| i + c.len_utf8());
            let scheme = &before[start..];
            if scheme.starts_with(|c: char| c.is_ascii_alphabetic()) {
                return Some(Link::WithScheme {
                    scheme: scheme.to_owned(),
                    url: token[start..].to_owned(),
                });
            }
        }
        let token = token.trim_start_matches(|c: char| !c.is_alphanumeric());
        if token.starts_with("www.") && token.len() > 4 {
            return Some(Link::Www(format!("http://{token}")));
        }
        let host = token.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit('@').next().unwrap_or_default();
        let host = host.split(':').next().unwrap_or_default();
        let labels: Vec<&str> = host.split('.').collect();
        let looks_like_host = labels.len() >= 2
            && labels.iter().all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
            && labels.last().is_some_and(|tld| {
                tld.chars().count() >= 2 && tld.chars().all(char::is_alphabetic)
            });
        looks_like_host.then(|| Link::BareHost(format!("http://{host}")))
    }
}

/// `javascript:` and friends where a token (or an attribute value inside it) starts.
fn dangerous_scheme(lower: &str) -> Option<&'static str> {
    DANGEROUS_SCHEMES.into_iter().find(|scheme| {
        lower.match_indices(scheme).any(|(at, _)| {
            let starts_a_word = lower[..at]
                .chars()
                .next_back()
                .is_none_or(|before| !before.is_alphanumeric());
            // `data: 42` and `File: report.pdf` are prose; `data:text/html` is a link.
            let followed = lower[at + scheme.len()..]
                .chars()
                .next()
                .is_some_and(|after| !after.is_whitespace());
            starts_a_word && followed
        })
    })
}

/// The entities ammonia writes into text, read back as the characters a reader sees.
fn decode_entities(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
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

/// Lowercased words, split at anything that is not a letter or digit.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The sanitized text without its (allowed) tags.
fn visible_text(sanitized: &str) -> String {
    let mut visible = String::with_capacity(sanitized.len());
    let mut in_tag = false;
    for c in sanitized.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => visible.push(c),
            _ => {}
        }
    }
    visible
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
            "<a href=\"javascript:alert(1)\">x</a>",
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
            "file:///etc/passwd",
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
            "metadata:value",
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

    proptest! {
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

//! What a reader sees of a stored message, the one form every content rule and the repeat rule judge
//! (SPEC §6): the sanitized text with its tags removed, its entities decoded and the characters that
//! render as nothing dropped. Markup cannot then spell a blocked word, a link or a run of letters that
//! the rules would miss: `c&#97;sino`, `cas<b></b>ino` and `cas\u{200B}ino` all read `casino`.

use std::str::Chars;

/// The visible text of a stored (sanitized) message. Made for ammonia's output, in which every `<`
/// starts a tag and every `&` an entity; raw input would lose text that merely looks like a tag.
pub fn text(stored: &str) -> String {
    chars(stored).collect()
}

/// [`text`], one character at a time, for callers that only hash or scan it.
pub fn chars(stored: &str) -> VisibleChars<'_> {
    VisibleChars {
        rest: stored.chars(),
    }
}

/// Whether a visible text shows nothing at all (only spaces, including the blank-looking fillers).
pub fn is_blank(visible: &str) -> bool {
    visible.chars().all(char::is_whitespace)
}

/// The characters of [`text`], decoded as they are read.
pub struct VisibleChars<'a> {
    rest: Chars<'a>,
}

impl Iterator for VisibleChars<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        loop {
            let c = match self.rest.next()? {
                '<' => {
                    // Ammonia leaves no `>` inside a tag: attributes are gone.
                    self.rest.by_ref().find(|&c| c == '>');
                    continue;
                }
                '&' => self.entity().unwrap_or('&'),
                c => c,
            };
            if is_invisible(c) {
                continue;
            }
            return Some(if is_blank_filler(c) { ' ' } else { c });
        }
    }
}

impl VisibleChars<'_> {
    /// Decodes the entity after a `&` (consuming it) or answers `None` and consumes nothing. One pass:
    /// `&amp;#97;` reads `&#97;`, as a browser shows it.
    fn entity(&mut self) -> Option<char> {
        // The longest entity read here is `&#x10FFFF;`.
        const LONGEST_NAME: usize = 8;
        let rest = self.rest.as_str();
        let end = rest
            .bytes()
            .take(LONGEST_NAME + 1)
            .position(|b| b == b';')?;
        let name = &rest[..end];
        let decoded = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            "nbsp" => '\u{A0}',
            _ => {
                let number = name.strip_prefix('#')?;
                let (digits, radix) = match number.strip_prefix(['x', 'X']) {
                    Some(hex) => (hex, 16),
                    None => (number, 10),
                };
                // `from_str_radix` would also take a sign.
                if !digits.bytes().all(|b| char::from(b).is_digit(radix)) {
                    return None;
                }
                let code = u32::from_str_radix(digits, radix).ok()?;
                // What an HTML parser makes of NUL, surrogates and numbers past Unicode.
                char::from_u32(code)
                    .filter(|&c| c != '\0')
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            }
        };
        self.rest = rest[end + 1..].chars();
        Some(decoded)
    }
}

/// Characters that take no space and show nothing: zero-width spaces and joiners, the soft hyphen, bidi
/// controls, invisible operators, variation selectors, tag characters and the like, plus control
/// characters other than spaces and line breaks.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{AD}'
            | '\u{34F}'
            | '\u{61C}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
    ) || (c.is_control() && !c.is_whitespace())
}

/// Letters that render as an empty space (Hangul fillers, the blank Braille pattern): read as a space,
/// so a message of them is blank and a word split by one is two words, as it looks.
fn is_blank_filler(c: char) -> bool {
    matches!(
        c,
        '\u{115F}' | '\u{1160}' | '\u{2800}' | '\u{3164}' | '\u{FFA0}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_tags_and_decodes_entities() {
        assert_eq!(text("cas<b></b>ino"), "casino");
        assert_eq!(text("<i>a</i> <strong>b</strong>"), "a b");
        assert_eq!(text("a &lt; b &amp;&amp; c &gt; d"), "a < b && c > d");
        assert_eq!(text("&quot;x&quot; &apos;y&apos;"), "\"x\" 'y'");
        assert_eq!(text("free&nbsp;money"), "free\u{A0}money");
        assert_eq!(
            text("c&#97;sino c&#x61;sino c&#X61;sino"),
            "casino casino casino"
        );
        assert_eq!(
            text("&#0; &#xD800; &#x110000;"),
            "\u{FFFD} \u{FFFD} \u{FFFD}"
        );
    }

    #[test]
    fn decodes_once_and_leaves_what_is_no_entity() {
        assert_eq!(text("&amp;#97;"), "&#97;");
        assert_eq!(text("&amp;lt;"), "&lt;");
        assert_eq!(text("AT&T; fish & chips &"), "AT&T; fish & chips &");
        assert_eq!(
            text("&unknown; &#; &#x; &#12a; &#+5; &#99999999999;"),
            "&unknown; &#; &#x; &#12a; &#+5; &#99999999999;"
        );
        assert_eq!(text("&nbsp"), "&nbsp");
    }

    #[test]
    fn drops_what_renders_as_nothing() {
        assert_eq!(text("cas\u{200B}i\u{200C}n\u{200D}o"), "casino");
        assert_eq!(
            text("c\u{AD}a\u{2060}s\u{FEFF}i\u{200E}n\u{202E}o\u{2066}"),
            "casino"
        );
        assert_eq!(
            text("c\u{E0041}a\u{FE0F}s\u{34F}i\u{180E}no\u{1}"),
            "casino"
        );
        assert_eq!(text("&#8203;x&#x200b;"), "x");
        assert_eq!(text("line\nbreak\ttab"), "line\nbreak\ttab");
        assert_eq!(text("日本語 👋 héllo"), "日本語 👋 héllo");
    }

    #[test]
    fn blank_fillers_read_as_spaces() {
        assert_eq!(text("cas\u{3164}ino"), "cas ino");
        for blank in [
            "&nbsp;",
            "\u{3164}",
            "\u{2800}",
            "\u{115F}\u{1160}",
            "\u{FFA0}",
            "\u{200B}",
            "<b> </b>",
            "",
        ] {
            assert!(is_blank(&text(blank)), "{blank:?}");
        }
        assert!(!is_blank(&text("&nbsp;.")));
    }

    #[test]
    fn chars_and_text_agree() {
        let stored = "<b>a&amp;b</b>\u{200B} c&#97;";
        assert_eq!(chars(stored).collect::<String>(), text(stored));
    }
}

//! Which stored messages an operator command works on (`teachlyd messages purge|export`): those a
//! user sent or received, sent within a time range. No I/O: the store turns a `Selection` into SQL.

use std::time::Duration;

use time::{
    Date, OffsetDateTime, PrimitiveDateTime, Time, format_description::well_known::Rfc3339,
    macros::format_description,
};

use super::{UserId, in_utc, rfc3339};

/// Messages sent at or after `since` and strictly before `until` (each bound optional), sent or
/// received by `user` when one is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Selection {
    user: Option<UserId>,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("--since ({since}) is after --until ({until}); give a --since at or before --until")]
    SinceAfterUntil { since: String, until: String },
    #[error(
        "--older-than {0} reaches back before the earliest time teachlyd can name; give a shorter duration"
    )]
    TooFarBack(String),
}

impl Selection {
    /// `[since, until)` of `user`'s messages (everyone's when `None`).
    pub fn between(
        user: Option<UserId>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Self, SelectionError> {
        if let (Some(since), Some(until)) = (since, until)
            && since > until
        {
            return Err(SelectionError::SinceAfterUntil {
                since: rfc3339(since),
                until: rfc3339(until),
            });
        }
        Ok(Self {
            user,
            since: since.map(in_utc),
            until: until.map(in_utc),
        })
    }

    /// Messages sent strictly before `now - age` (the cut): one sent exactly at the cut is kept.
    pub fn older_than(
        user: Option<UserId>,
        age: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, SelectionError> {
        let too_far = || SelectionError::TooFarBack(crate::config::HumanDuration(age).to_string());
        let age = time::Duration::try_from(age).map_err(|_| too_far())?;
        let cut = now.checked_sub(age).ok_or_else(too_far)?;
        Self::between(user, None, Some(cut))
    }

    pub fn user(&self) -> Option<UserId> {
        self.user
    }

    /// The inclusive lower bound, in UTC.
    pub fn since(&self) -> Option<OffsetDateTime> {
        self.since
    }

    /// The exclusive upper bound, in UTC (for a purge, the cut).
    pub fn until(&self) -> Option<OffsetDateTime> {
        self.until
    }

    /// Whether a message from `from` to `to` sent at `at` is selected: the rule the store's SQL
    /// follows, stated once in Rust for tests.
    pub fn selects(&self, from: UserId, to: UserId, at: OffsetDateTime) -> bool {
        self.user.is_none_or(|user| from == user || to == user)
            && self.since.is_none_or(|since| at >= since)
            && self.until.is_none_or(|until| at < until)
    }
}

/// An instant as operators type it: RFC 3339 (`2026-01-31T12:00:00Z`, `…T12:00:00.5+01:00`), or a
/// plain date (`2026-01-31`), meaning midnight UTC at its start. A clap value parser.
pub fn parse_instant(text: &str) -> Result<OffsetDateTime, String> {
    let text = text.trim();
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(in_utc(at));
    }
    if let Ok(date) = Date::parse(text, format_description!("[year]-[month]-[day]")) {
        return Ok(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc());
    }
    Err(format!(
        "`{text}` is not a time; write RFC 3339 like `2026-01-31T12:00:00Z` or a date like `2026-01-31` (midnight UTC)"
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::{UtcOffset, macros::datetime};

    use super::*;

    proptest! {
        #[test]
        fn every_rfc3339_instant_reads_back_exactly(
            seconds in 0i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            offset_minutes in -1439i32..1440,
        ) {
            let offset = UtcOffset::from_whole_seconds(offset_minutes * 60).unwrap();
            let at = OffsetDateTime::from_unix_timestamp(seconds).unwrap()
                .replace_nanosecond(nanos).unwrap()
                .to_offset(offset);
            // Years past 9999 after the offset cannot be written in RFC 3339.
            prop_assume!(at.year() <= 9999 && at.year() >= 0);
            let text = at.format(&Rfc3339).unwrap();
            prop_assert_eq!(parse_instant(&text), Ok(at));
        }

        #[test]
        fn never_panics(text in ".*") {
            let _ = parse_instant(&text);
        }
    }

    #[test]
    fn reads_rfc3339_and_plain_dates_as_utc() {
        assert_eq!(
            parse_instant("2026-01-31"),
            Ok(datetime!(2026-01-31 00:00 UTC))
        );
        assert_eq!(
            parse_instant("2026-01-31T12:30:00Z"),
            Ok(datetime!(2026-01-31 12:30 UTC))
        );
        let offset = parse_instant("2026-01-31T12:30:00.000001+02:00").unwrap();
        assert_eq!(offset, datetime!(2026-01-31 10:30:00.000001 UTC));
        assert_eq!(offset.offset(), UtcOffset::UTC);
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-01-31 12:00",
            "31/01/2026",
            "1700000000",
        ] {
            let error = parse_instant(bad).expect_err(bad);
            assert!(error.contains("RFC 3339"), "{error}");
        }
    }

    #[test]
    fn since_is_inclusive_and_until_exclusive() {
        let since = datetime!(2026-01-01 00:00 UTC);
        let until = datetime!(2026-02-01 00:00 UTC);
        let selection = Selection::between(None, Some(since), Some(until)).unwrap();
        assert!(selection.selects(1, 2, since));
        assert!(!selection.selects(1, 2, since - time::Duration::microseconds(1)));
        assert!(selection.selects(1, 2, until - time::Duration::microseconds(1)));
        assert!(!selection.selects(1, 2, until));
    }

    #[test]
    fn since_after_until_is_refused_and_equal_selects_nothing() {
        let at = datetime!(2026-01-01 00:00 UTC);
        let error = Selection::between(None, Some(at + time::Duration::SECOND), Some(at))
            .expect_err("since after until");
        assert!(error.to_string().contains("--since"), "{error}");
        let empty = Selection::between(None, Some(at), Some(at)).unwrap();
        assert!(!empty.selects(1, 2, at));
    }

    #[test]
    fn a_user_selects_what_they_sent_or_received() {
        let selection = Selection::between(Some(7), None, None).unwrap();
        let at = datetime!(2026-01-01 00:00 UTC);
        assert!(selection.selects(7, 2, at));
        assert!(selection.selects(2, 7, at));
        assert!(!selection.selects(2, 3, at));
    }

    #[test]
    fn older_than_cuts_at_now_minus_the_age_and_keeps_the_cut() {
        let now = datetime!(2026-04-01 12:00:00.000001 UTC);
        let selection = Selection::older_than(None, Duration::from_secs(90 * 86_400), now).unwrap();
        let cut = datetime!(2026-01-01 12:00:00.000001 UTC);
        assert_eq!(selection.until(), Some(cut));
        assert_eq!(selection.since(), None);
        assert!(selection.selects(1, 2, cut - time::Duration::microseconds(1)));
        assert!(!selection.selects(1, 2, cut));
    }

    #[test]
    fn an_age_beyond_the_calendar_is_refused() {
        let now = datetime!(2026-04-01 12:00 UTC);
        let error = Selection::older_than(None, Duration::from_secs(u64::MAX / 2), now)
            .expect_err("too far back");
        assert!(error.to_string().contains("--older-than"), "{error}");
    }
}

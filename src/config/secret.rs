//! Values that must never reach a log line, an error message or `config check` output.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

/// `postgres://user:pw@host/db` → `postgres://user:***@host/db`, and `?password=pw` → `?password=***`
/// (libpq and sqlx take it there too); anything without a password is unchanged.
pub fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    format!(
        "{}{}{}",
        &url[..authority_start],
        mask_userinfo(&url[authority_start..authority_end]),
        mask_query(&url[authority_end..])
    )
}

fn mask_userinfo(authority: &str) -> String {
    match authority
        .rsplit_once('@')
        .and_then(|(userinfo, host)| Some((userinfo.split_once(':')?.0, host)))
    {
        Some((user, host)) => format!("{user}:***@{host}"),
        None => authority.to_owned(),
    }
}

fn mask_query(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, format!("#{fragment}")),
        None => (query, String::new()),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}{fragment}", pairs.join("&"))
}

pub(super) fn serialize_masked_url<S: Serializer>(
    url: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&mask_url_password(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_only_the_password() {
        assert_eq!(
            mask_url_password("postgres://teachly:hunter2@db:5432/chat?sslmode=require"),
            "postgres://teachly:***@db:5432/chat?sslmode=require"
        );
        assert_eq!(
            mask_url_password("postgres://teachly@db/chat"),
            "postgres://teachly@db/chat"
        );
        assert_eq!(
            mask_url_password("sqlite://teachlyd.db"),
            "sqlite://teachlyd.db"
        );
        assert_eq!(
            mask_url_password("postgres://u:p@ss:w@rd@host/db"),
            "postgres://u:***@host/db"
        );
        assert_eq!(
            mask_url_password("postgres://db/chat?user=teachly&password=hunter2&sslmode=require"),
            "postgres://db/chat?user=teachly&password=***&sslmode=require"
        );
        assert_eq!(
            mask_url_password("postgres://u:pw@db/chat?Password=x#frag"),
            "postgres://u:***@db/chat?Password=***#frag"
        );
    }

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("correct horse battery staple".to_owned());
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
    }
}

//! Values a command-line flag and its config-file twin share. One parser each, used by
//! clap (`value_parser`) and by serde (the file), so both refuse a bad value alike.
use std::{
    fmt,
    marker::PhantomData,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::{self, Deserializer, Visitor};

use super::Setting;

/// A duration as humantime reads it ("500ms", "10s", "2m"), greater than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A duration, or "off".
pub fn parse_setting(text: &str) -> Result<Setting, String> {
    if text == "off" {
        return Ok(Setting::Off);
    }
    parse_duration(text).map(Setting::After)
}

pub fn parse_scan_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(10) {
        return Err("must be between 10ms and 10s".into());
    }
    Ok(d)
}

/// A socket address, or "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

pub fn parse_listen(text: &str) -> Result<Listen, String> {
    if text == "off" {
        return Ok(Listen(None));
    }
    text.parse::<SocketAddr>()
        .map(|a| Listen(Some(a)))
        .map_err(|_| {
            "expected IP:PORT (e.g. 127.0.0.1:9924, 0.0.0.0:9924, [::1]:9924) or \"off\"".to_owned()
        })
}

/// A socket path, or "off".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPath(pub Option<PathBuf>);

pub fn parse_socket(text: &str) -> Result<SocketPath, String> {
    if text == "off" {
        return Ok(SocketPath(None));
    }
    let path = Path::new(text);
    if !path.is_absolute() || path.file_name().is_none() {
        return Err("expected an absolute path such as /run/hangwatch/api.sock, or \"off\"".into());
    }
    Ok(SocketPath(Some(path.to_path_buf())))
}

/// What stdout carries: `--output` and its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line.
    Json,
    /// A readable multi-line report.
    Text,
}

#[derive(Debug, thiserror::Error)]
#[error("webhook URL `{url}`: {reason}")]
pub struct BadWebhookUrl {
    url: String,
    reason: &'static str,
}

/// A checked webhook URL: `http[s]://HOST[:PORT]/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<Self, BadWebhookUrl> {
        let bad = |reason| BadWebhookUrl {
            url: text.to_owned(),
            reason,
        };
        let uri: ureq::http::Uri = text.parse().map_err(|_| bad("not a valid URL"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(bad("must start with http:// or https://")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("has no host"));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn parse_webhook(text: &str) -> Result<WebhookUrl, String> {
    WebhookUrl::parse(text).map_err(|e| e.to_string())
}

/// Deserializes a string with `parse`; a value of another type is refused with `expecting`
/// (the file's error then points at the value).
pub fn from_str_with<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct Parse<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, String>,
        _out: PhantomData<T>,
    }
    impl<T> Visitor<'_> for Parse<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            (self.parse)(text).map_err(|reason| E::custom(format!("{text:?}: {reason}")))
        }
    }
    deserializer.deserialize_str(Parse {
        expecting,
        parse,
        _out: PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_off() {
        assert_eq!(parse_setting("off"), Ok(Setting::Off));
        assert_eq!(
            parse_setting("1m"),
            Ok(Setting::After(Duration::from_secs(60)))
        );
        assert!(parse_duration("0s").is_err());
        let err = parse_duration("5 sekonds").expect_err("bad unit");
        assert!(err.contains("sekonds") && err.contains("examples"), "{err}");
        assert!(parse_scan_interval("1ms").is_err());
    }
}

//! MQTT topic names and filters: validation and matching (MQTT 3.1.1 §4.7, MQTT 5 §4.7) with
//! AWS IoT Core's departures from the specification, and AWS's topic size and depth limits.
//!
//! Matching as AWS applies it:
//! - `#` matches one or more levels, never zero: `sensor/#` receives `sensor/`,
//!   `sensor/temperature` and `sensor/temperature/room1`, but not `sensor` (AWS IoT Core
//!   developer guide, "MQTT topics" → topic filters, and "AWS IoT differences from MQTT
//!   specifications"). The MQTT specification (§4.7.1.2) lets `sport/#` match the parent
//!   `sport`; AWS does not, so neither does the emulator.
//! - A filter whose first level is a wildcard (`#`, `+/...`) does not match a topic that
//!   starts with `$` (MQTT §4.7.2, which AWS follows for its reserved `$aws/...` topics);
//!   `$aws/certificates/#` does.
//! - `+` matches exactly one level, an empty one included (`sensor/+` matches `sensor/`).

/// A topic name a client may publish to: non-empty, no wildcards, no NUL.
pub(crate) fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A topic filter: `#` only as the whole last level, `+` only as a whole level. A shared
/// subscription `$share/<ShareName>/<filter>` needs a share name without `/`, `+` or `#`
/// and a valid filter after it (MQTT 5 §4.8.2).
pub(crate) fn valid_filter(filter: &str) -> bool {
    if filter == "$share" || filter.starts_with("$share/") {
        return shared_parts(filter).is_some_and(|(name, inner)| {
            !name.is_empty() && !name.contains(['+', '#']) && valid_plain_filter(inner)
        });
    }
    valid_plain_filter(filter)
}

fn valid_plain_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return false;
        }
        if level.contains('+') && *level != "+" {
            return false;
        }
    }
    true
}

/// Does `filter` match `topic`, as AWS IoT Core matches them? Wildcards at the first level
/// do not match `$` topics, and `#` needs at least one level (`a/#` does not match `a`).
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // AWS: `#` does not match the parent level (the specification's `sport/#` →
            // `sport` case); it needs one more level, which may be empty (`a/`).
            (Some("#"), Some(_)) => return true,
            (Some("#"), None) => return false,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The share name and the filter of a shared subscription (`$share/<ShareName>/<filter>`);
/// `None` for an ordinary filter.
pub(crate) fn shared_parts(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix("$share/")?.split_once('/')
}

/// The part of a topic name or filter that AWS counts against its size and slash limits.
///
/// AWS: the limits exclude "the first three mandatory segments for Basic Ingest topics
/// (`$AWS/rules/rule-name/`)" (quotas page, "Topic size" and "Maximum number of slashes in
/// topic and topic filter"). AWS's own client (aws-c-mqtt `mqtt5_utils.c`,
/// `aws_mqtt_is_valid_topic_for_iot_core`) also skips a `$share/<group>/` prefix and matches
/// `$aws/rules/` case-insensitively; this does the same. Every other reserved `$aws/...` topic
/// counts in full.
pub(crate) fn aws_counted_part(topic: &str) -> &str {
    let t = skip_prefix_segments(topic, "$share", 2);
    skip_prefix_segments(t, "$aws/rules", 3)
}

/// Strips `first/.../<name>/` when `topic` starts with `first` (ASCII case-insensitive) and
/// has at least `segments` non-empty leading segments followed by more text.
fn skip_prefix_segments<'a>(topic: &'a str, first: &str, segments: usize) -> &'a str {
    let head = topic.get(..first.len());
    let whole_segment = topic.as_bytes().get(first.len()) == Some(&b'/');
    if !whole_segment || !head.is_some_and(|h| h.eq_ignore_ascii_case(first)) {
        return topic;
    }
    let mut end = 0;
    for _ in 0..segments {
        match topic[end..].find('/') {
            Some(i) if i > 0 => end += i + 1,
            _ => return topic,
        }
    }
    if end >= topic.len() {
        topic
    } else {
        &topic[end..]
    }
}

/// Whether `topic` (name or filter) is within AWS's size and slash limits.
pub(crate) fn within_aws_limits(
    topic: &str,
    max_bytes: Option<usize>,
    max_slashes: Option<usize>,
) -> bool {
    let counted = aws_counted_part(topic);
    if max_bytes.is_some_and(|m| counted.len() > m) {
        return false;
    }
    max_slashes.is_none_or(|m| counted.bytes().filter(|b| *b == b'/').count() <= m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matching() {
        assert!(matches("a/b", "a/b"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
        assert!(matches("#", "a"));
        assert!(matches("#", "a/b"));
        assert!(!matches("a/b/+", "a/b/c/d"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("#", "$aws/certificates/create/json/accepted"));
        assert!(matches(
            "$aws/certificates/#",
            "$aws/certificates/create/json/accepted"
        ));
    }

    #[test]
    fn a_multi_level_wildcard_does_not_match_the_parent_level_as_on_aws() {
        // AWS's example: `sensor/#` gets `sensor/`, `sensor/temperature`,
        // `sensor/temperature/room1`, not `sensor` (the MQTT specification would match it).
        assert!(!matches("sensor/#", "sensor"));
        assert!(matches("sensor/#", "sensor/"));
        assert!(matches("sensor/#", "sensor/temperature"));
        assert!(matches("sensor/#", "sensor/temperature/room1"));
        assert!(!matches("sensor/+/#", "sensor/temperature"));
        assert!(matches("sensor/+/#", "sensor/temperature/room1"));
        assert!(!matches("$aws/certificates/#", "$aws/certificates"));
    }

    #[test]
    fn first_level_wildcards_do_not_match_dollar_topics() {
        assert!(!matches("#", "$aws/things/t/shadow/update"));
        assert!(!matches("+/things/#", "$aws/things/t"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("$aws/+/t/#", "$aws/things/t/shadow"));
        assert!(matches("a/+", "a/$b"), "only the first level is special");
    }

    #[test]
    fn validation() {
        assert!(valid_filter("a/+/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b+"));
        assert!(!valid_filter(""));
        assert!(valid_filter("$share/g/a/+"));
        assert!(valid_filter("$share/g/#"));
        assert!(!valid_filter("$share/g"));
        assert!(!valid_filter("$share/g/"), "no filter after the share name");
        assert!(!valid_filter("$share//a"), "an empty share name");
        assert!(!valid_filter("$share/g+/a"));
        assert!(!valid_filter("$share/#/a"));
        assert!(!valid_filter("$share"));
        assert_eq!(shared_parts("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(shared_parts("$sharex/g/a"), None);
        assert_eq!(shared_parts("a/b"), None);
        assert!(valid_topic_name("a/b"));
        assert!(!valid_topic_name("a/+"));
    }

    #[test]
    fn aws_limits_skip_basic_ingest_and_shared_prefixes() {
        assert_eq!(aws_counted_part("$aws/rules/my_rule/a/b"), "a/b");
        assert_eq!(aws_counted_part("$AWS/Rules/my_rule/a"), "a");
        assert_eq!(aws_counted_part("$share/g/a/+"), "a/+");
        assert_eq!(aws_counted_part("$share/g/$aws/rules/r/x"), "x");
        assert_eq!(aws_counted_part("$aws/rules/"), "$aws/rules/");
        assert_eq!(aws_counted_part("$sharex/g/a"), "$sharex/g/a");
        assert_eq!(aws_counted_part("$aws/rules/r"), "$aws/rules/r");
        assert_eq!(
            aws_counted_part("$aws/things/t/shadow/update"),
            "$aws/things/t/shadow/update"
        );
        let eight_levels = "a/b/c/d/e/f/g/h";
        assert!(within_aws_limits(eight_levels, Some(256), Some(7)));
        assert!(!within_aws_limits("a/b/c/d/e/f/g/h/i", Some(256), Some(7)));
        assert!(within_aws_limits(
            "$aws/rules/r/a/b/c/d/e/f/g/h",
            Some(256),
            Some(7)
        ));
        let long = "x".repeat(257);
        assert!(!within_aws_limits(&long, Some(256), None));
        assert!(within_aws_limits(
            &format!("$aws/rules/r/{}", &long[1..]),
            Some(256),
            None
        ));
        assert!(within_aws_limits(&long, None, None));
        // The fleet-provisioning reply topics fit.
        assert!(within_aws_limits(
            "$aws/provisioning-templates/FleetTemplate/provision/json/accepted",
            Some(256),
            Some(7)
        ));
    }
}

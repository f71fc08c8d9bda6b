//! Docker's `filters` query parameter, in both encodings: `{"k":{"v":true}}` and `{"k":["v"]}`.

use std::collections::{BTreeMap, BTreeSet};

use crate::http::ApiError;

#[derive(Debug, Default, Clone)]
pub struct Filters(pub BTreeMap<String, BTreeSet<String>>);

impl Filters {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Filters, ApiError> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else { return Ok(Filters::default()) };
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| ApiError::bad_request(format!("invalid filter: {e}")))?;
        let obj = value.as_object().ok_or_else(|| ApiError::bad_request("invalid filter: expected a JSON object"))?;
        let mut out = BTreeMap::new();
        for (key, values) in obj {
            if !allowed.contains(&key.as_str()) {
                return Err(ApiError::bad_request(format!("invalid filter '{key}'")));
            }
            let set: BTreeSet<String> = match values {
                serde_json::Value::Object(m) => m.keys().cloned().collect(),
                serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                _ => return Err(ApiError::bad_request(format!("invalid filter: bad value for '{key}'"))),
            };
            out.insert(key.clone(), set);
        }
        Ok(Filters(out))
    }

    pub fn get(&self, key: &str) -> Option<&BTreeSet<String>> {
        self.0.get(key).filter(|s| !s.is_empty())
    }

    /// True if no values are given for `key`, or `pred` holds for one of them.
    pub fn any(&self, key: &str, pred: impl Fn(&str) -> bool) -> bool {
        match self.get(key) {
            None => true,
            Some(values) => values.iter().any(|v| pred(v)),
        }
    }

    /// Label filters: every `key` or `key=value` must match.
    pub fn labels_match(&self, labels: &BTreeMap<String, String>) -> bool {
        match self.get("label") {
            None => true,
            Some(values) => values.iter().all(|f| match f.split_once('=') {
                Some((k, v)) => labels.get(k).is_some_and(|lv| lv == v),
                None => labels.contains_key(f.as_str()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_encodings() {
        let a = Filters::parse(Some(r#"{"name":{"web":true}}"#), &["name"]).unwrap();
        let b = Filters::parse(Some(r#"{"name":["web"]}"#), &["name"]).unwrap();
        assert!(a.get("name").unwrap().contains("web"));
        assert!(b.get("name").unwrap().contains("web"));
        assert!(Filters::parse(Some(r#"{"nope":["x"]}"#), &["name"]).unwrap_err().message.contains("invalid filter 'nope'"));
        assert!(Filters::parse(Some("{"), &["name"]).is_err());
    }

    #[test]
    fn labels() {
        let f = Filters::parse(Some(r#"{"label":["a","b=2"]}"#), &["label"]).unwrap();
        let mut l = BTreeMap::new();
        l.insert("a".to_string(), "1".to_string());
        l.insert("b".to_string(), "2".to_string());
        assert!(f.labels_match(&l));
        l.insert("b".to_string(), "3".to_string());
        assert!(!f.labels_match(&l));
    }
}

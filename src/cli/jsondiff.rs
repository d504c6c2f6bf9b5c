//! A structural diff of two JSON values (two states of an entity): every added, removed or
//! changed leaf with its JSON Pointer path.

use serde::Serialize;
use serde_json::Value;

/// One difference between two JSON values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Change {
    /// `added`, `removed` or `changed`.
    pub op: &'static str,
    /// JSON Pointer (RFC 6901) of the value; `""` is the whole document.
    pub path: String,
    /// The value before (absent for `added`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The value after (absent for `removed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

impl Change {
    /// One line for humans: `~ /balance: 100 → 250`.
    pub fn human(&self) -> String {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        let show = |v: &Option<Value>| v.as_ref().map_or_else(String::new, Value::to_string);
        match self.op {
            "added" => format!("+ {path}: {}", show(&self.to)),
            "removed" => format!("- {path}: {}", show(&self.from)),
            _ => format!("~ {path}: {} → {}", show(&self.from), show(&self.to)),
        }
    }
}

/// Differences from `a` to `b`, in document order (object keys sorted).
pub(crate) fn diff(a: &Value, b: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk(a, b, &mut String::new(), &mut out);
    out
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn walk(a: &Value, b: &Value, path: &mut String, out: &mut Vec<Change>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(k));
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => walk(va, vb, path, out),
                    (Some(va), None) => out.push(Change {
                        op: "removed",
                        path: path.clone(),
                        from: Some(va.clone()),
                        to: None,
                    }),
                    (None, Some(vb)) => out.push(Change {
                        op: "added",
                        path: path.clone(),
                        from: None,
                        to: Some(vb.clone()),
                    }),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                match (x.get(i), y.get(i)) {
                    (Some(va), Some(vb)) => walk(va, vb, path, out),
                    (Some(va), None) => out.push(Change {
                        op: "removed",
                        path: path.clone(),
                        from: Some(va.clone()),
                        to: None,
                    }),
                    (None, Some(vb)) => out.push(Change {
                        op: "added",
                        path: path.clone(),
                        from: None,
                        to: Some(vb.clone()),
                    }),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        _ if a == b => {}
        _ => out.push(Change {
            op: "changed",
            path: path.clone(),
            from: Some(a.clone()),
            to: Some(b.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leaves_are_compared() {
        let a = json!({"balance": 10, "owner": "x", "tags": [1, 2], "a/b": 1});
        let b = json!({"balance": 25, "tags": [1], "new": true, "a/b": 1});
        let d = diff(&a, &b);
        let paths: Vec<(&str, &str)> = d.iter().map(|c| (c.op, c.path.as_str())).collect();
        assert_eq!(
            paths,
            vec![
                ("changed", "/balance"),
                ("added", "/new"),
                ("removed", "/owner"),
                ("removed", "/tags/1"),
            ]
        );
        assert_eq!(d[0].human(), "~ /balance: 10 → 25");
        assert!(diff(&a, &a).is_empty());
        assert_eq!(diff(&json!(1), &json!("1"))[0].path, "");
    }
}

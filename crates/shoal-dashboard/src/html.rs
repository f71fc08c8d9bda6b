//! HTML escaping and the few helpers the templates share. Every piece of text that did not come
//! from this crate goes through [`esc`] (element content and quoted attribute values alike).

use std::fmt::Write;

/// Escapes `&`, `<`, `>`, `"` and `'` so the text is safe in element content and in quoted
/// attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment for a link (`/services/{id}`): percent-encoded, then safe in an attribute.
pub fn seg(text: &str) -> String {
    esc(&urlencoding::encode(text))
}

/// The first 12 characters of an ID.
pub fn short(id: &str) -> &str {
    let end = id
        .char_indices()
        .nth(12)
        .map(|(i, _)| i)
        .unwrap_or(id.len());
    &id[..end]
}

/// A `<table>` with a caption, escaped header cells and rows of already-rendered cells.
pub fn table(
    caption: &str,
    class: &str,
    headers: &[&str],
    rows: &[Vec<String>],
    empty: &str,
) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        let _ = write!(out, "<p class=\"empty\">{}</p>", esc(empty));
        return out;
    }
    let _ = write!(
        out,
        "<div class=\"table-wrap\"><table class=\"{}\"><caption>{}</caption><thead><tr>",
        esc(class),
        esc(caption)
    );
    for h in headers {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A hidden CSRF field for a form.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// Bytes as `12.3 MB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// How long ago `t` was, coarsely (`5 s ago`, `3 min ago`).
pub fn ago(t: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (now - t).num_seconds();
    if t.timestamp() <= 0 {
        return String::new();
    }
    match secs {
        s if s < 0 => "just now".into(),
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86400 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
        );
        assert_eq!(esc("a & b's"), "a &amp; b&#39;s");
        assert_eq!(esc("plain-text_1.2"), "plain-text_1.2");
        assert_eq!(esc("ünïcødé"), "ünïcødé");
        assert_eq!(seg("a/b c\"<"), "a%2Fb%20c%22%3C");
        assert_eq!(short("0123456789abcdefghij"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn tables_escape_headers_and_show_empty_text() {
        let t = table("Things", "t", &["<h>"], &[vec!["<b>ok</b>".into()]], "none");
        assert!(
            t.contains("&lt;h&gt;")
                && t.contains("<td><b>ok</b></td>")
                && t.contains("<caption>Things</caption>")
        );
        assert_eq!(
            table("x", "t", &["a"], &[], "nothing <here>"),
            "<p class=\"empty\">nothing &lt;here&gt;</p>"
        );
    }

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(12_300_000), "12.3 MB");
        let now = chrono::Utc::now();
        assert_eq!(ago(now - chrono::Duration::seconds(5), now), "5 s ago");
        assert_eq!(ago(now - chrono::Duration::seconds(180), now), "3 min ago");
    }
}

//! Date and time matching with Java `DateTimeFormatter` patterns (what Pact files carry),
//! translated to chrono's parser.

use chrono::format::{parse, Parsed, StrftimeItems};

/// Translates a Java pattern (`yyyy-MM-dd'T'HH:mm:ss.SSSXXX`) to a chrono format string.
pub fn chrono_format(java: &str) -> String {
    let chars: Vec<char> = java.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let mut run = 1;
        while i + run < chars.len() && chars[i + run] == c {
            run += 1;
        }
        match c {
            '\'' => {
                // A quoted literal; '' is a quote.
                let mut j = i + 1;
                if chars.get(j) == Some(&'\'') {
                    out.push('\'');
                    i += 2;
                    continue;
                }
                while j < chars.len() && chars[j] != '\'' {
                    push_literal(&mut out, chars[j]);
                    j += 1;
                }
                i = j + 1;
                continue;
            }
            'y' | 'u' => out.push_str(if run == 2 { "%y" } else { "%Y" }),
            'M' | 'L' => out.push_str(match run {
                1 | 2 => "%m",
                3 => "%b",
                _ => "%B",
            }),
            'd' => out.push_str("%d"),
            'D' => out.push_str("%j"),
            'H' => out.push_str("%H"),
            'h' => out.push_str("%I"),
            'm' => out.push_str("%M"),
            's' => out.push_str("%S"),
            'S' => {
                // Fractional seconds; chrono's %.f carries its own dot.
                if out.ends_with('.') {
                    out.pop();
                    out.push_str(match run {
                        3 => "%.3f",
                        6 => "%.6f",
                        9 => "%.9f",
                        _ => "%.f",
                    });
                } else {
                    out.push_str(match run {
                        3 => "%3f",
                        6 => "%6f",
                        9 => "%9f",
                        _ => "%f",
                    });
                }
            }
            'a' => out.push_str("%p"),
            'E' => out.push_str(if run >= 4 { "%A" } else { "%a" }),
            'X' | 'x' | 'Z' | 'O' => out.push_str("%#z"),
            'z' | 'V' => out.push_str("%Z"),
            other => {
                for _ in 0..run {
                    push_literal(&mut out, other);
                }
            }
        }
        i += run;
    }
    out
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

/// Whether `text` is a date/time written in the Java pattern `format`.
pub fn matches(format: &str, text: &str) -> bool {
    let mut parsed = Parsed::new();
    parse(
        &mut parsed,
        text,
        StrftimeItems::new(&chrono_format(format)),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_patterns_match_what_they_describe() {
        let iso = "yyyy-MM-dd'T'HH:mm:ss.SSSXXX";
        assert!(matches(iso, "2026-11-26T07:46:58.123Z"));
        assert!(matches(iso, "2026-11-26T07:46:58.123+01:00"));
        assert!(!matches(iso, "2026-11-26 07:46:58"));
        assert!(!matches(iso, "2026-13-26T07:46:58.123Z"));
        assert!(matches("yyyy-MM-dd", "2026-11-26"));
        assert!(!matches("yyyy-MM-dd", "2026-11-26T00:00"));
        assert!(matches("HH:mm", "23:59"));
        assert!(matches("dd/MM/yyyy", "02/11/2013"));
    }
}

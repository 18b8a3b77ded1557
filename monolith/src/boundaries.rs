//! The module boundary check: a module's code may use another module only through its facade.
//!
//! Rust privacy already stops a module from naming another's private submodules (`store`,
//! `http`); this check covers what the compiler cannot see:
//!
//! 1. **Tables**: a string literal (SQL) in one module's files must not name a table owned by
//!    another module. Tables are read from the migrations; the owner is the table's prefix.
//!    Files outside the modules (the composition root, seeding) may name no table at all.
//! 2. **Surface**: a path `crate::<module>::<name>` outside `<module>` must name an item of the
//!    module's public surface (the `pub` items and `pub use` re-exports of its `mod.rs`).
//! 3. **Leaks**: a module's `mod.rs` must not declare `pub mod`, which would publish internals.
//!
//! `tests/api/boundaries.rs` runs it on the real tree (no violation) and on a fixture that
//! crosses each rule (every crossing reported).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The shop's modules; each owns the tables prefixed with its name.
pub const MODULES: &[&str] = &["accounts", "catalog", "inventory", "orders", "payments"];

/// One boundary crossing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The file, relative to the source folder.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What was crossed.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Checks every `.rs` file under `src` against the tables created in the `.sql` files under
/// `migrations`.
pub fn check(src: &Path, migrations: &Path) -> std::io::Result<Vec<Violation>> {
    let tables = tables(migrations)?;
    let mut files = Vec::new();
    collect(src, "rs", &mut files)?;
    files.sort();
    let mut surfaces = BTreeMap::new();
    for module in MODULES {
        let mod_rs = src.join(module).join("mod.rs");
        if mod_rs.exists() {
            surfaces.insert(*module, surface(&std::fs::read_to_string(mod_rs)?));
        }
    }
    let mut violations = Vec::new();
    for path in files {
        let relative = path.strip_prefix(src).unwrap_or(&path).to_path_buf();
        let owner = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .and_then(|first| MODULES.iter().copied().find(|m| *m == first));
        let source = std::fs::read_to_string(&path)?;
        let lexed = lex(&source);
        let mut report = |line: usize, message: String| {
            violations.push(Violation {
                file: relative.clone(),
                line,
                message,
            });
        };
        for (line, literal) in &lexed.strings {
            for word in words(literal) {
                if let Some(table_owner) = tables.get(word) {
                    if owner != Some(table_owner.as_str()) {
                        let who = owner.map_or_else(
                            || "code outside the modules".to_owned(),
                            |m| format!("module {m}"),
                        );
                        report(
                            *line,
                            format!("{who} names table {word}, owned by module {table_owner}"),
                        );
                    }
                }
            }
        }
        for (line, module, name) in crate_paths(&lexed.code) {
            if owner == Some(module) {
                continue;
            }
            let allowed = name == "self" || surfaces.get(module).is_some_and(|s| s.contains(&name));
            if !allowed {
                report(
                    line,
                    format!("crate::{module}::{name} is not part of module {module}'s facade"),
                );
            }
        }
        if owner.is_some() && relative.file_name().is_some_and(|f| f == "mod.rs") {
            for (i, text) in lexed.code.lines().enumerate() {
                if let Some(rest) = text.trim_start().strip_prefix("pub mod ") {
                    let name = rest.trim_end_matches(';').trim();
                    report(
                        i + 1,
                        format!("pub mod {name} publishes the module's internals"),
                    );
                }
            }
        }
    }
    violations.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Ok(violations)
}

fn collect(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, extension, out)?;
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
    Ok(())
}

/// Table name → owning module, from every `CREATE TABLE` in the migrations.
fn tables(migrations: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut files = Vec::new();
    collect(migrations, "sql", &mut files)?;
    let mut tables = BTreeMap::new();
    for file in files {
        let sql = std::fs::read_to_string(file)?.to_lowercase();
        let tokens: Vec<&str> = sql.split_whitespace().collect();
        for window in tokens.windows(3) {
            if window[0] == "create" && window[1] == "table" {
                let name = window[2].trim_end_matches('(');
                if let Some(owner) = MODULES.iter().find(|m| name.starts_with(&format!("{m}_"))) {
                    tables.insert(name.to_owned(), (*owner).to_owned());
                }
            }
        }
    }
    Ok(tables)
}

/// The names a module's `mod.rs` makes public.
fn surface(mod_rs: &str) -> BTreeSet<String> {
    let code = lex(mod_rs).code;
    let mut names = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("pub use ") {
            let rest = rest.trim_end_matches(';');
            match (rest.find('{'), rest.rfind('}')) {
                (Some(open), Some(close)) => {
                    for item in rest[open + 1..close].split(',') {
                        if let Some(name) = last_name(item) {
                            names.insert(name);
                        }
                    }
                }
                _ => names.extend(last_name(rest)),
            }
            continue;
        }
        for keyword in ["struct", "enum", "trait", "fn", "const", "static", "type"] {
            let prefixes = [format!("pub {keyword} "), format!("pub async {keyword} ")];
            if let Some(rest) = prefixes.iter().find_map(|p| line.strip_prefix(p.as_str())) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

/// The name an item of a `use` list binds (`a::B as C` binds `C`).
fn last_name(item: &str) -> Option<String> {
    let item = item.trim();
    let name = match item.split_once(" as ") {
        Some((_, alias)) => alias.trim(),
        None => item.rsplit("::").next()?.trim(),
    };
    (!name.is_empty()).then(|| name.to_owned())
}

/// Every `crate::<module>::<name>` in code (including each name of a `{...}` group), as
/// (line, module, first name after the module).
fn crate_paths(code: &str) -> Vec<(usize, &'static str, String)> {
    let mut found = Vec::new();
    let mut offset = 0;
    while let Some(at) = code[offset..].find("crate::") {
        let start = offset + at + "crate::".len();
        offset = start;
        let rest = &code[start..];
        let Some(module) = MODULES
            .iter()
            .copied()
            .find(|m| rest.starts_with(m) && rest[m.len()..].starts_with("::"))
        else {
            continue;
        };
        let line = code[..start].matches('\n').count() + 1;
        let after = rest[module.len() + 2..].trim_start();
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.extend(first_segment(&item).map(|n| (line, module, n)));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.extend(first_segment(&item).map(|n| (line, module, n)));
        } else {
            found.extend(first_segment(after).map(|n| (line, module, n)));
        }
    }
    found
}

fn first_segment(path: &str) -> Option<String> {
    let name: String = path
        .trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Identifier-like words of a string (`catalog_products` in `"FROM catalog_products p"`).
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// A source file split into code (comments and literals blanked, lines kept) and the string
/// literals with the line each starts on.
struct Lexed {
    code: String,
    strings: Vec<(usize, String)>,
}

fn lex(source: &str) -> Lexed {
    let chars: Vec<char> = source.chars().collect();
    let mut code = String::with_capacity(source.len());
    let mut strings = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Blanks a skipped char but keeps line breaks, so code line numbers stay true.
    let blank = |c: char, code: &mut String, line: &mut usize| {
        if c == '\n' {
            *line += 1;
            code.push('\n');
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                blank(chars[i], &mut code, &mut line);
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&chars, i)
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                code.push(c);
                i += 1;
                continue;
            }
            let start_line = line;
            let mut literal = String::new();
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                literal.push(chars[j]);
                blank(chars[j], &mut code, &mut line);
                j += 1;
            }
            strings.push((start_line, literal));
            code.push_str("\"\"");
            i = j;
        } else if c == '"' {
            let start_line = line;
            let mut literal = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    literal.push(chars[i]);
                    i += 1;
                }
                if let Some(&escaped) = chars.get(i) {
                    literal.push(escaped);
                    blank(escaped, &mut code, &mut line);
                }
                i += 1;
            }
            i += 1;
            strings.push((start_line, literal));
            code.push_str("\"\"");
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            code.push_str("' '");
            i += 3;
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            code.push_str("' '");
            i += 1;
        } else {
            if c == '\n' {
                line += 1;
            }
            code.push(c);
            i += 1;
        }
    }
    Lexed { code, strings }
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexer_separates_strings_comments_and_code() {
        let lexed = lex("let a = \"x \\\" y\"; // crate::catalog::store\nlet b = r#\"FROM t\"#; let c = '\"';\n/* \"no\" */ crate::orders::Order");
        assert_eq!(
            lexed.strings,
            vec![(1, "x \\\" y".to_owned()), (2, "FROM t".to_owned())]
        );
        assert!(!lexed.code.contains("store"));
        assert_eq!(
            crate_paths(&lexed.code),
            vec![(3, "orders", "Order".to_owned())]
        );
    }

    #[test]
    fn groups_and_aliases_are_read() {
        let paths = crate_paths("use crate::catalog::{self, Catalog, store::find as f};");
        let names: Vec<_> = paths.into_iter().map(|(_, _, n)| n).collect();
        assert_eq!(names, ["self", "Catalog", "store"]);
        let surface = surface("pub use http::{router, ProductList};\npub trait CatalogApi {}\nmod store;\npub(crate) fn hidden() {}");
        assert_eq!(
            surface,
            BTreeSet::from([
                "router".to_owned(),
                "ProductList".to_owned(),
                "CatalogApi".to_owned()
            ])
        );
    }
}

//! The project's configuration: the proxy's TOML file, which names each carve-out's data sync
//! and contracts, so that commands need no database or service URL repeated. It is `--config
//! FILE` (`STRANGLER_CONFIG`), else `./strangler.toml`, else the stack's
//! `.strangler-stack/strangler.toml` (which `strangler stack` writes).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use strangler_proxy::config::{CarveOutSpec, Config, ProxyArgs};

/// The files looked for, in order, when no file is named.
pub const SEARCHED: [&str; 2] = ["strangler.toml", ".strangler-stack/strangler.toml"];

/// The configuration file: `file`, else the first of [`SEARCHED`] that exists.
pub fn find(file: Option<&Path>) -> Option<PathBuf> {
    match file {
        Some(file) => Some(file.to_path_buf()),
        None => SEARCHED.into_iter().map(PathBuf::from).find(|p| p.exists()),
    }
}

/// The carve-out `name` as the configuration declares it, with the file it came from. `None`
/// when no file is named and none is found; an error when the file cannot be loaded or has no
/// such carve-out.
pub fn carveout(
    file: Option<&Path>,
    name: &str,
) -> anyhow::Result<Option<(PathBuf, CarveOutSpec)>> {
    let Some(path) = find(file) else {
        return Ok(None);
    };
    let args = ProxyArgs {
        config: Some(path.clone()),
        ..ProxyArgs::defaults()
    };
    let config = Config::load(&args)?;
    let spec = config
        .carveouts
        .into_iter()
        .find(|c| c.name == name)
        .with_context(|| format!("{} has no carve-out {name}", path.display()))?;
    Ok(Some((path, spec)))
}

/// A file of the toolkit's own tree (`extracted/catalog/sync.toml`), as an absolute path found
/// from where the binary was built, whatever the current folder is.
pub fn toolkit_file(relative: &str) -> PathBuf {
    let found = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::path::absolute(&found).unwrap_or(found)
}

/// The mapping file of a carve-out when neither a flag nor the configuration names one: the
/// toolkit's `extracted/<carveout>/sync.toml`.
pub fn default_mapping(carveout: &str) -> PathBuf {
    toolkit_file(&format!("extracted/{carveout}/sync.toml"))
}

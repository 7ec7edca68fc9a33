//! The web console: static files embedded at build time (see `build.rs`), served at `/`.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

fn mime(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _)| *n == name) {
        Some((n, bytes)) => (
            [
                (header::CONTENT_TYPE, mime(n)),
                // The files change with the binary; revalidate rather than cache for long.
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn index() -> Response {
    asset("index.html")
}

async fn file(Path(name): Path<String>) -> Response {
    asset(&name)
}

/// Adds `/` and `/<asset>` to `router`.
pub fn routes<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.route("/", get(index)).route("/{name}", get(file))
}

#[cfg(test)]
mod tests {
    use super::ASSETS;

    fn asset_text(name: &str) -> String {
        let (_, bytes) = ASSETS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not embedded"));
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    /// The console's plugin pickers offer exactly the inspect plugins the engine knows, in its
    /// order: a name it lacks would be refused as an unknown plugin, one it misses is unreachable.
    #[test]
    fn the_console_offers_the_engines_inspect_plugins() {
        let js = asset_text("inspect.js");
        let start = js
            .find("export const PLUGINS = [")
            .expect("inspect.js declares PLUGINS");
        let list = &js[start..];
        let list = &list[list.find('[').expect("[") + 1..list.find(']').expect("]")];
        let console: Vec<&str> = list
            .split(',')
            .map(|s| s.trim().trim_matches('\''))
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(console, tether_host::inspect::plugins());
    }

    /// Every module a console file imports (`from './x.js'`) is embedded: the console has no
    /// build step, so a missing file would only show as a broken page in the browser.
    #[test]
    fn every_console_import_is_embedded() {
        let mut imports = 0;
        for (name, bytes) in ASSETS {
            if !name.ends_with(".js") {
                continue;
            }
            let text = String::from_utf8_lossy(bytes);
            for part in text.split("from './").skip(1) {
                let target = part.split('\'').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|(n, _)| *n == target),
                    "{name} imports ./{target}, which is not embedded"
                );
                imports += 1;
            }
        }
        assert!(imports > 0, "no imports found: the pattern is stale");
    }

    /// The console builds its DOM from text nodes: no file assigns HTML.
    #[test]
    fn no_console_file_assigns_html() {
        for (name, bytes) in ASSETS {
            if !name.ends_with(".js") {
                continue;
            }
            let text = String::from_utf8_lossy(bytes);
            for banned in [
                ".innerHTML",
                ".outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "createContextualFragment",
            ] {
                assert!(!text.contains(banned), "{name} uses {banned}");
            }
        }
    }
}

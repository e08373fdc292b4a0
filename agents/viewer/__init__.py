"""The archive web viewer (`cubepilot serve`): read-only pages and a JSON API over the archive,
with charts drawn on the server as SVG. `create_app` builds the app; `serve` binds it."""

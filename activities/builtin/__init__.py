"""Stepflow's built-in tools; importing this package registers them all.

- `activities.builtin.files`: `read_file`, `write_file`, `list_files`, confined to
  the workspace directory (`STEPFLOW_WORKSPACE`).
- `activities.builtin.transforms`: pure JSON and text helpers (`echo`, `json_parse`,
  `json_dump`, `json_select`, `text_template`, `text_split`, `text_join`, `word_count`).
- `activities.builtin.http`: `http_get`, limited to the hosts in
  `STEPFLOW_HTTP_ALLOW_HOSTS`.
"""

from stepflow.activities.builtin import files, http, transforms

__all__ = ["files", "http", "transforms"]

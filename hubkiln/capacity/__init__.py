"""How many students an image serves at class start, measured (`invoke loadtest`).

`loadtest` boots the image with a generated roster on `machines`, runs the load
`client` (the simulated class: login form, spawn, kernel, `cells`) and writes the
`record`: per-step percentiles, failures by kind, memory and CPU per student.
"""

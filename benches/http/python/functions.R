# The function apinode serves as an `r-function` endpoint in `cargo xtask bench python`.
add <- function(a, b) a + b

# The in-process reference of `cargo xtask bench python` for R: what calling `add` costs inside
# R, alone and with the JSON work (jsonlite, as apinode's R worker does it). Prints one JSON
# object (nanoseconds per call, the loop's own cost included).
# Usage: Rscript in_process.R SECONDS BODY FUNCTIONS_FILE
args <- commandArgs(trailingOnly = TRUE)
seconds <- as.numeric(args[1])
body <- args[2]
source(args[3])

# Calls per run grown until one run takes a tenth of the budget, then the median of 5 runs.
per_call_ns <- function(f, budget) {
  n <- 1000
  repeat {
    t <- system.time(for (i in seq_len(n)) f())[["elapsed"]]
    if (t >= budget / 10 || n >= 1e8) break
    n <- n * 4
  }
  n <- max(1, round(n * (budget / 5) / max(t, 1e-6)))
  runs <- sapply(1:5, function(k) system.time(for (i in seq_len(n)) f())[["elapsed"]])
  median(runs) / n * 1e9
}

call <- per_call_ns(function() add(1, 2), seconds / 2)
round_trip <- per_call_ns(function() {
  jsonlite::toJSON(list(response = do.call(add, jsonlite::fromJSON(body))),
                   auto_unbox = TRUE, na = "null", digits = NA)
}, seconds / 2)
cat(jsonlite::toJSON(list(
  r = paste(R.version$major, R.version$minor, sep = "."),
  call_ns = call,
  json_round_trip_ns = round_trip
), auto_unbox = TRUE, digits = NA), "\n")

# apinode R worker: loads one user code file, then answers calls from the node.
#
# The same protocol as the Python worker (docs/workers.md): frames of a 4-byte big-endian length
# then UTF-8 JSON. The node starts this script through `sh` with the protocol moved off the
# standard streams: frames arrive on fd 4 and leave on fd 3, while fd 0 is /dev/null and fd 1 is
# stderr, so `print` and `cat` in user code end up in the node's log and never corrupt a frame.

if (!requireNamespace("jsonlite", quietly = TRUE)) {
  message("apinode R worker: the R package `jsonlite` is not installed ",
          "(on Debian: apt-get install r-cran-jsonlite)")
  quit(save = "no", status = 3)
}

proto_in <- file("/dev/fd/4", open = "rb", raw = TRUE)
proto_out <- file("/dev/fd/3", open = "wb", raw = TRUE)

read_frame <- function() {
  header <- readBin(proto_in, "raw", n = 4L)
  if (length(header) < 4L) return(NULL)
  length <- sum(as.numeric(header) * c(16777216, 65536, 256, 1))
  body <- raw(0)
  while (length(body) < length) {
    chunk <- readBin(proto_in, "raw", n = length - length(body))
    if (length(chunk) == 0L) return(NULL)
    body <- c(body, chunk)
  }
  text <- rawToChar(body)
  Encoding(text) <- "UTF-8"
  jsonlite::fromJSON(text, simplifyVector = TRUE)
}

write_frame <- function(message) {
  json <- jsonlite::toJSON(message, auto_unbox = TRUE, null = "null", na = "null",
                           digits = NA, POSIXt = "ISO8601", Date = "ISO8601")
  body <- charToRaw(enc2utf8(as.character(json)))
  n <- length(body)
  header <- as.raw(c(n %/% 16777216, (n %/% 65536) %% 256, (n %/% 256) %% 256, n %% 256))
  writeBin(c(header, body), proto_out)
  flush(proto_out)
}

# Runs `thunk`; returns list(ok = value) or list(error = ...) with R's condition class, message
# and the calls on the stack when the error was signalled.
guarded <- function(thunk) {
  calls <- NULL
  tryCatch(
    list(ok = withCallingHandlers(thunk(), error = function(e) calls <<- sys.calls())),
    error = function(e) {
      frames <- vapply(calls, function(call) paste(deparse(call, nlines = 1L), collapse = ""), "")
      list(error = list(type = class(e)[[1]], message = conditionMessage(e),
                        traceback = paste(frames, collapse = "\n"), http_status = NULL))
    })
}

user_error <- function(message) {
  stop(structure(class = c("UserCodeError", "error", "condition"),
                 list(message = message, call = NULL)))
}

# An R predictor returns a vector of predictions, or a list with `prediction`, optionally
# `probas` (a data.frame with one column per class) and `customKeys` (one list per row).
split_prediction <- function(result, rows) {
  probas <- NULL
  custom_keys <- NULL
  if (is.list(result) && !is.data.frame(result)) {
    predictions <- result$prediction
    probas <- result$probas
    custom_keys <- result$customKeys
  } else {
    predictions <- result
  }
  if (is.factor(predictions)) predictions <- as.character(predictions)
  predictions <- as.vector(predictions)
  if (length(predictions) != rows) {
    user_error(sprintf("the predictor returned %d predictions for %d rows",
                       length(predictions), rows))
  }
  out <- list(predictions = I(predictions), classes = NULL, probas = NULL, custom_keys = NULL)
  if (!is.null(probas)) {
    probas <- as.data.frame(probas)
    if (nrow(probas) != rows) {
      user_error(sprintf("the predictor returned %d rows of probabilities for %d rows",
                         nrow(probas), rows))
    }
    out$classes <- I(names(probas))
    out$probas <- unname(as.matrix(probas))
  }
  if (!is.null(custom_keys)) {
    if (length(custom_keys) != rows) {
      user_error(sprintf("the predictor returned %d custom keys for %d rows",
                         length(custom_keys), rows))
    }
    out$custom_keys <- custom_keys
  }
  out
}

main <- function() {
  init <- read_frame()
  if (is.null(init)) return(invisible())
  env <- new.env(parent = globalenv())
  loaded <- guarded(function() {
    env$folders <- init$folders
    source(init$code_file, local = env, keep.source = FALSE)
    fn <- get0(init$entry, envir = env, mode = "function", inherits = FALSE)
    if (is.null(fn)) user_error(sprintf("%s defines no function `%s`", init$code_file, init$entry))
    fn
  })
  if (!is.null(loaded$error)) {
    write_frame(loaded)
    return(invisible())
  }
  fn <- loaded$ok
  write_frame(list(ready = list(pid = Sys.getpid(), version = R.version.string)))

  repeat {
    message <- read_frame()
    if (is.null(message)) return(invisible())
    reply <- if (identical(init$kind, "function")) {
      guarded(function() {
        args <- message$args
        if (!is.list(args)) user_error("the request body must be a JSON object")
        do.call(fn, args)
      })
    } else {
      guarded(function() {
        records <- message$records
        rows <- if (is.data.frame(records)) nrow(records) else length(records)
        if (rows == 0L) return(list(predictions = I(list())))
        split_prediction(fn(records), rows)
      })
    }
    written <- tryCatch({ write_frame(reply); TRUE }, error = function(e) e)
    if (!isTRUE(written)) {
      write_frame(list(error = list(
        type = "TypeError", message = paste("the return value cannot be written as JSON:",
                                            conditionMessage(written)),
        traceback = "", http_status = NULL)))
    }
  }
}

main()

//! The crate's one error type. Each variant tells the caller what to do about it, and each
//! message names the culprit: the file, the field path, the archive entry or the column.

use std::path::PathBuf;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading a service folder, building a bundle or opening one.
///
/// Fields named `origin` describe where the problem was found, ready to print: for example
/// ``bundle `customers.zip` `` or ``service folder `examples/customers` ``.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file of the file system failed.
    #[error("cannot read or write `{}`: {source}.", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The archive could not be read as a zip file at all.
    #[error(
        "`{origin}` is not a readable zip archive ({detail}); pass a bundle written by \
         `apinode bundle build`."
    )]
    NotAZip { origin: String, detail: String },

    /// A path could escape the bundle or the service folder: `..`, an absolute path, a
    /// backslash, a drive letter, a symbolic link.
    #[error("{origin}: `{entry}` is not a safe path: {reason}.")]
    UnsafePath {
        origin: String,
        entry: String,
        reason: String,
    },

    /// A file's content does not match the SHA-256 that `manifest.json` records.
    #[error(
        "{origin}: `{entry}` is corrupted: its SHA-256 is {actual} but manifest.json records \
         {expected}; rebuild or download the bundle again."
    )]
    ChecksumMismatch {
        origin: String,
        entry: String,
        expected: String,
        actual: String,
    },

    /// A file's size does not match the size that `manifest.json` records.
    #[error(
        "{origin}: `{entry}` holds {actual} bytes but manifest.json records {expected}; rebuild \
         or download the bundle again."
    )]
    SizeMismatch {
        origin: String,
        entry: String,
        expected: u64,
        actual: u64,
    },

    /// A file that is named somewhere (`manifest.json`, `service.toml`) does not exist.
    #[error(
        "`{entry}` is missing from {origin}, but {needed_by} needs it; add the file or fix the \
         reference."
    )]
    MissingFile {
        origin: String,
        entry: String,
        /// What names the file, e.g. ``service.toml `endpoints[0].python.code` ``.
        needed_by: String,
    },

    /// The archive holds a file `manifest.json` does not list.
    #[error(
        "{origin} holds `{entry}`, which manifest.json does not list; a bundle may hold only \
         the files its manifest lists, so rebuild it with `apinode bundle build`."
    )]
    ExtraFile { origin: String, entry: String },

    /// A field of `service.toml` or `manifest.json` is wrong. `path` is the field path, such as
    /// `endpoints[2].lookup.keys`; it is empty when the whole file is at fault (a syntax error).
    #[error("{}", invalid_message(file, path, message))]
    Invalid {
        file: String,
        path: String,
        message: String,
    },

    /// An id (endpoint id, dataset name, folder name, key id, parameter name) is used twice.
    /// `path` is the field path of the second use.
    #[error(
        "{file}: `{path}` repeats `{id}`, which an earlier entry already uses; each must be \
         unique, so rename or remove one of them."
    )]
    DuplicateId {
        file: String,
        path: String,
        id: String,
    },

    /// A size or count is over its [`Limits`](crate::Limits).
    #[error(
        "{what} is {actual}, over the limit of {limit}; make the bundle smaller or raise the \
         limit."
    )]
    TooLarge {
        what: String,
        limit: u64,
        actual: u64,
    },

    /// A dataset could not be read or converted to Parquet. `file` is the source file (or the
    /// bundled Parquet file); `message` names the column and the 1-based row when it can.
    #[error("dataset `{dataset}` (`{file}`): {message}.")]
    Dataset {
        dataset: String,
        file: String,
        message: String,
    },

    /// `manifest.json` was written by a newer (or unknown) version of the format.
    #[error(
        "manifest.json has format_version {found} but this apinode reads only format_version \
         {supported}; rebuild the bundle with a matching `apinode bundle build` or upgrade the \
         node."
    )]
    UnsupportedVersion { found: u64, supported: u32 },

    /// The archive is a zip file but an entry cannot be read back (bad compressed data, a CRC
    /// error, duplicate names, encryption, an unsupported compression method).
    #[error("{origin} is damaged: {detail}; rebuild or download the bundle again.")]
    Corrupt { origin: String, detail: String },

    /// [`Bundle::dataset_parquet`](crate::Bundle::dataset_parquet) was asked for a dataset the
    /// manifest does not declare.
    #[error(
        "the bundle declares no dataset `{dataset}`; use one of the names in manifest.json \
         `datasets`."
    )]
    UnknownDataset { dataset: String },

    /// [`Bundle::dataset_parquet`](crate::Bundle::dataset_parquet) was asked for a referenced
    /// dataset, whose data lives in a database rather than in the bundle.
    #[error(
        "dataset `{dataset}` is not bundled: it references table `{table}` on connection \
         `{connection}`, so query it through that connection."
    )]
    NotBundled {
        dataset: String,
        connection: String,
        table: String,
    },
}

fn invalid_message(file: &str, path: &str, message: &str) -> String {
    if path.is_empty() {
        format!("{file} is invalid: {message}.")
    } else {
        format!("{file}: `{path}`: {message}.")
    }
}

impl Error {
    pub(crate) fn invalid(
        file: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Error {
        Error::Invalid {
            file: file.into(),
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn dataset(
        dataset: impl Into<String>,
        file: impl Into<String>,
        message: impl Into<String>,
    ) -> Error {
        Error::Dataset {
            dataset: dataset.into(),
            file: file.into(),
            message: message.into(),
        }
    }
}

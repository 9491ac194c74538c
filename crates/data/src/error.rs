//! Errors of the data pipeline. Each names the file or folder at fault.

use std::path::PathBuf;

/// Why a dataset cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error (in the message, so not also a `source()`).
        cause: std::io::Error,
    },
    /// The folder matches none of the supported layouts.
    #[error("{path} is not a dataset: {reason}")]
    UnknownLayout {
        /// The folder.
        path: PathBuf,
        /// What was looked for.
        reason: String,
    },
    /// A class folder holds no file.
    #[error("class folder {0} is empty")]
    EmptyClass(PathBuf),
    /// A label file is malformed or disagrees with the images.
    #[error("{path}:{line}: {reason}")]
    LabelFile {
        /// The label file.
        path: PathBuf,
        /// 1-based line number (0 when the problem is the file as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Every file of the dataset failed to decode.
    #[error("no readable image in {path} ({bad} files could not be decoded)")]
    NoReadableImage {
        /// The dataset folder.
        path: PathBuf,
        /// How many files failed.
        bad: usize,
    },
    /// A setting is out of range.
    #[error("invalid data setting {field}: {reason}")]
    InvalidSetting {
        /// The setting, as a config path (e.g. `data.batch_size`).
        field: &'static str,
        /// What was expected.
        reason: String,
    },
    /// Writing a generated image failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |cause| DataError::Io { path, cause }
}

//! The crate's error type.

/// Everything that can go wrong decoding, encoding or transforming an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// No bytes at all.
    #[error("the image is empty")]
    Empty,
    /// The encoded file is larger than [`crate::ImageLimits::max_bytes`].
    #[error("the encoded image is {len} bytes; the limit is {max}")]
    TooManyBytes {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not PNG, JPEG or WebP.
    #[error("unknown image format (PNG, JPEG and WebP are read)")]
    UnknownFormat,
    /// A known format, or a feature of one, that is not supported.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The image would exceed the decode limits (a decompression bomb, or
    /// just too big).
    #[error("the image is {width}x{height}: {reason}")]
    TooLarge {
        /// Width the file declares.
        width: u32,
        /// Height the file declares.
        height: u32,
        /// Which limit it breaks.
        reason: String,
    },
    /// The bytes are damaged or truncated.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// An argument of an operation is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Encoding failed.
    #[error("cannot encode the image: {0}")]
    Encode(String),
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// An [`ImageError::InvalidArgument`].
pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

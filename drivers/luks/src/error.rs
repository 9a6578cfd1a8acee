//! How the crypto core's errors reach the host.

use qimg_crypt::CryptError;
use qimg_driver_api::DriverError;

/// The driver error for `e`, with QEMU's message and a kind the host maps
/// to qemu-img's exit status.
pub fn driver_error(e: CryptError) -> DriverError {
    let message = e.to_string();
    match e {
        CryptError::NotLuks | CryptError::Version(_) | CryptError::Invalid(_) => {
            DriverError::invalid_image(message)
        }
        CryptError::CipherAlg { .. }
        | CryptError::CipherName(_)
        | CryptError::CipherMode(_)
        | CryptError::Hash(_)
        | CryptError::IvGen(_)
        | CryptError::EssivKey(_) => DriverError::unsupported(message),
        CryptError::BadPassword | CryptError::Option(_) => DriverError::invalid_argument(message),
        CryptError::Random(_) | CryptError::Io(_) => DriverError::from_errno(5, message),
    }
}

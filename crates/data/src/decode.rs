//! Decoding by content, never by extension: ImageNet's train set has a PNG named `.JPEG`
//! and CMYK JPEGs. Everything becomes 8-bit RGB.

use std::io::Cursor;
use std::path::Path;

use image::{ImageReader, RgbImage};

/// Decodes an encoded image of any supported format (JPEG, PNG, GIF, BMP, WebP, TIFF) into
/// RGB8. Grayscale is replicated, alpha dropped, 16-bit scaled, CMYK converted. A decoder
/// panic is reported as a reason, like any other undecodable file.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty file".to_string());
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not an image (unrecognised content)".to_string());
    }
    // A decoder bug must cost one file, not the epoch or the check.
    let image = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| "the decoder panicked on this file".to_string())?
        .map_err(|e| e.to_string())?;
    if image.width() == 0 || image.height() == 0 {
        return Err("image has no pixels".to_string());
    }
    Ok(image.into_rgb8())
}

/// Reads and decodes `path`; the error is the reason, ready to report beside the path.
pub fn decode_file(path: &Path) -> Result<RgbImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).expect("encode");
        bytes.into_inner()
    }

    #[test]
    fn png_is_decoded_whatever_its_name_says() {
        let image = ImageBuffer::from_fn(5, 4, |x, y| Rgb([x as u8 * 40, y as u8 * 60, 7]));
        let bytes = encode(DynamicImage::ImageRgb8(image.clone()), ImageFormat::Png);
        assert_eq!(decode(&bytes).expect("decodes"), image);
    }

    #[test]
    fn grayscale_rgba_and_16_bit_become_rgb8() {
        let gray = ImageBuffer::from_fn(3, 2, |x, _| Luma([x as u8 * 100]));
        let rgb = decode(&encode(DynamicImage::ImageLuma8(gray), ImageFormat::Png)).expect("gray");
        assert_eq!(rgb.get_pixel(2, 1), &Rgb([200, 200, 200]));

        let rgba = ImageBuffer::from_fn(2, 2, |_, _| Rgba([10u8, 20, 30, 0]));
        let rgb = decode(&encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png)).expect("rgba");
        assert_eq!(rgb.get_pixel(0, 0), &Rgb([10, 20, 30]));

        let deep = ImageBuffer::from_fn(2, 2, |_, _| Rgb([65535u16, 0, 32896]));
        let rgb = decode(&encode(DynamicImage::ImageRgb16(deep), ImageFormat::Png)).expect("16");
        assert_eq!(rgb.get_pixel(1, 1), &Rgb([255, 0, 128]));

        let gray_alpha = ImageBuffer::from_fn(2, 1, |_, _| LumaA([90u8, 255]));
        let bytes = encode(DynamicImage::ImageLumaA8(gray_alpha), ImageFormat::Png);
        assert_eq!(
            decode(&bytes).expect("la").get_pixel(0, 0),
            &Rgb([90, 90, 90])
        );
    }

    #[test]
    fn cmyk_jpeg_decodes_to_rgb() {
        // Made by Pillow: a 16x8 CMYK JPEG, left half pure cyan, right half pure yellow.
        let bytes = include_bytes!("../tests/fixtures/cmyk.jpg");
        let rgb = decode(bytes).expect("CMYK JPEG decodes");
        assert_eq!(rgb.dimensions(), (16, 8));
        let cyan = rgb.get_pixel(2, 4);
        let yellow = rgb.get_pixel(13, 4);
        assert!(cyan[0] < 60 && cyan[1] > 180 && cyan[2] > 180, "{cyan:?}");
        assert!(
            yellow[0] > 180 && yellow[1] > 180 && yellow[2] < 60,
            "{yellow:?}"
        );
    }

    #[test]
    fn broken_files_are_reasons_not_panics() {
        assert_eq!(decode(&[]).expect_err("empty"), "empty file");
        assert!(decode(b"just some text, not an image").is_err());
        let image = ImageBuffer::from_fn(64, 64, |x, y| Rgb([x as u8, y as u8, 0]));
        let jpeg = encode(DynamicImage::ImageRgb8(image), ImageFormat::Jpeg);
        assert!(decode(&jpeg[..jpeg.len() / 3]).is_err(), "truncated JPEG");
        assert!(decode(&jpeg[..4]).is_err(), "only a header");
    }
}

//! Decoding by content, never by extension: ImageNet's train set has a PNG named `.JPEG`
//! and CMYK JPEGs. Everything becomes 8-bit RGB.

use std::io::Cursor;
use std::path::Path;

use image::{ImageReader, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

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
    let image = catch_decoder_panic(|| reader.decode())?;
    if image.width() == 0 || image.height() == 0 {
        return Err("image has no pixels".to_string());
    }
    Ok(image.into_rgb8())
}

/// Reads and decodes `path`; the error is the reason, ready to report beside the path.
pub fn decode_file(path: &Path) -> Result<RgbImage, String> {
    decode(&read_file(path)?)
}

/// Reads `path`; the error is the reason, ready to report beside the path.
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// The most bytes a decoded image may take, as `image`'s default limit.
const MAX_DECODED_BYTES: usize = 512 << 20;

/// A three-component JPEG in YCbCr or RGB (what photographs are), baseline or progressive,
/// its headers read, ready to decode only the part of it a crop reads. Other files,
/// grayscale and CMYK JPEGs included, go through [`decode`].
pub struct JpegRegion<'a> {
    decoder: zune_jpeg::JpegDecoder<ZCursor<&'a [u8]>>,
    width: usize,
    height: usize,
}

impl<'a> JpegRegion<'a> {
    /// `None` when `bytes` is not a JPEG this path takes (decode it with [`decode`]); an
    /// error when its headers are unreadable.
    pub fn new(bytes: &'a [u8]) -> Option<Result<Self, String>> {
        if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            return None;
        }
        // `image`'s options, so that both paths give the same pixels.
        let options = DecoderOptions::default()
            .set_strict_mode(false)
            .set_max_width(usize::MAX)
            .set_max_height(usize::MAX)
            .jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        if let Err(error) = catch_decoder_panic(|| decoder.decode_headers()) {
            return Some(Err(error));
        }
        // Three components only: zune-jpeg calls a two-component file YCbCr too.
        let three_components = decoder.info().is_some_and(|info| info.components == 3);
        if !three_components
            || !matches!(
                decoder.input_colorspace(),
                Some(ColorSpace::YCbCr | ColorSpace::RGB)
            )
        {
            return None;
        }
        let (width, height) = decoder.dimensions()?;
        if width == 0 || height == 0 {
            return Some(Err("image has no pixels".to_string()));
        }
        if width.saturating_mul(height).saturating_mul(3) > MAX_DECODED_BYTES {
            return Some(Err(format!(
                "image too large to decode ({width}x{height} pixels)"
            )));
        }
        Some(Ok(Self {
            decoder,
            width,
            height,
        }))
    }

    /// Width and height in pixels.
    pub fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Decodes into `pixels` (resized to the whole image, RGB8, row by row) at least the
    /// pixels of `columns` in the first `rows` rows; the others hold whatever they held.
    pub fn decode_into(
        mut self,
        columns: std::ops::Range<usize>,
        rows: usize,
        pixels: &mut Vec<u8>,
    ) -> Result<(), String> {
        pixels.resize(self.width * self.height * 3, 0);
        // Zero, as `image` hands the decoder a zeroed buffer: a scan that ends early leaves
        // pixels unwritten, and they must not be the previous image's.
        pixels[..rows.min(self.height) * self.width * 3].fill(0);
        self.decoder.set_region(columns, rows);
        catch_decoder_panic(|| self.decoder.decode_into(pixels))
    }
}

/// Runs a decoder call; an error or a panic becomes the reason the file is bad.
fn catch_decoder_panic<T, E: std::fmt::Display>(
    call: impl FnOnce() -> Result<T, E>,
) -> Result<T, String> {
    // A decoder bug must cost one file, not the epoch or the check.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
        .map_err(|_| "the decoder panicked on this file".to_string())?
        .map_err(|e| e.to_string())
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

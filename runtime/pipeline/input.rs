//! Borrowed views of one part's inputs, as the caller holds them (row strides allowed).

/// An 8-bit RGB image, `height × width × 3`, rows `stride` bytes apart.
#[derive(Clone, Copy, Debug)]
pub struct RgbView<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    /// Bytes from one row to the next (≥ 3 × width).
    pub stride: usize,
}

/// An organized point cloud, `height × width × 3` f32 (x, y, z), rows `stride` floats
/// apart. (0, 0, 0) means "no point".
#[derive(Clone, Copy, Debug)]
pub struct CloudView<'a> {
    pub data: &'a [f32],
    pub width: usize,
    pub height: usize,
    /// Floats from one row to the next (≥ 3 × width).
    pub stride: usize,
}

impl<'a> RgbView<'a> {
    /// A tightly packed image.
    pub fn packed(data: &'a [u8], width: usize, height: usize) -> Self {
        RgbView {
            data,
            width,
            height,
            stride: width * 3,
        }
    }
    /// Checks that the view's sizes and stride fit its data.
    pub fn validate(&self) -> crate::Result<()> {
        check_view(
            "RGB image",
            self.data.len(),
            self.width,
            self.height,
            self.stride,
        )
    }
    /// The 3 bytes of pixel (r, c). The view must be valid.
    #[inline]
    pub fn pixel(&self, r: usize, c: usize) -> [u8; 3] {
        let i = r * self.stride + 3 * c;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

impl<'a> CloudView<'a> {
    /// A tightly packed cloud.
    pub fn packed(data: &'a [f32], width: usize, height: usize) -> Self {
        CloudView {
            data,
            width,
            height,
            stride: width * 3,
        }
    }
    pub fn validate(&self) -> crate::Result<()> {
        check_view(
            "point cloud",
            self.data.len(),
            self.width,
            self.height,
            self.stride,
        )
    }
    /// The point at pixel (r, c). The view must be valid.
    #[inline]
    pub fn point(&self, r: usize, c: usize) -> [f32; 3] {
        let i = r * self.stride + 3 * c;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

fn check_view(
    what: &str,
    len: usize,
    width: usize,
    height: usize,
    stride: usize,
) -> crate::Result<()> {
    if width == 0 || height == 0 {
        return Err(crate::Error::Input(format!(
            "{what}: zero size {width}×{height}"
        )));
    }
    let row = width
        .checked_mul(3)
        .ok_or_else(|| crate::Error::Input(format!("{what}: width {width} overflows")))?;
    if stride < row {
        return Err(crate::Error::Input(format!(
            "{what}: row stride {stride} is smaller than a row ({row})"
        )));
    }
    let needed = (height - 1)
        .checked_mul(stride)
        .and_then(|v| v.checked_add(row))
        .ok_or_else(|| crate::Error::Input(format!("{what}: {width}×{height} overflows")))?;
    if len < needed {
        return Err(crate::Error::Input(format!(
            "{what}: {width}×{height} with stride {stride} needs {needed} elements, got {len}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_reject_bad_sizes_and_strides() {
        let px = [0u8; 30];
        assert!(RgbView::packed(&px, 5, 2).validate().is_ok());
        assert!(RgbView::packed(&px, 0, 2).validate().is_err());
        assert!(RgbView {
            data: &px,
            width: 5,
            height: 2,
            stride: 14
        }
        .validate()
        .is_err());
        assert!(RgbView {
            data: &px,
            width: 4,
            height: 2,
            stride: 18
        }
        .validate()
        .is_ok());
        assert!(RgbView::packed(&px, 5, 3).validate().is_err());
        let pts = [0f32; 18];
        assert!(CloudView::packed(&pts, 3, 2).validate().is_ok());
        assert!(CloudView {
            data: &pts,
            width: usize::MAX / 2,
            height: 2,
            stride: 9
        }
        .validate()
        .is_err());
    }
}

//! Pictures: PNGs decode with the expected sizes; the colormap is monotone in luminance;
//! text and shapes land where asked.

use miad::eval::picture::{
    colormap, format_number, heatmap_panel, histogram_plot, line_plot, luminance, Canvas, Series,
    BLACK, WHITE,
};

fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    (info.width, info.height, buf)
}

#[test]
fn colormap_is_monotone_in_luminance() {
    let mut prev = -1.0;
    for k in 0..=1000 {
        let l = luminance(colormap(k as f32 / 1000.0));
        assert!(l >= prev - 0.75, "step {k}: {l} after {prev}");
        prev = prev.max(l);
    }
    assert!(luminance(colormap(1.0)) - luminance(colormap(0.0)) > 150.0);
    assert_eq!(colormap(-3.0), colormap(0.0));
    assert_eq!(colormap(f32::NAN), colormap(0.0));
}

#[test]
fn canvas_png_roundtrip_and_drawing() {
    let mut c = Canvas::new(40, 20, WHITE);
    c.fill_rect(2, 3, 4, 5, BLACK);
    c.line(0, 19, 39, 19, [1, 2, 3]);
    c.text(10, 2, "A1", 1, BLACK);
    c.fill_rect(-5, -5, 3, 3, BLACK); // clipped, no panic
    let (w, h, data) = decode(&c.to_png().unwrap());
    assert_eq!((w, h), (40, 20));
    assert_eq!(data, c.data);
    assert_eq!(c.get(2, 3), BLACK);
    assert_eq!(c.get(5, 7), BLACK);
    assert_eq!(c.get(6, 7), WHITE);
    assert_eq!(c.get(20, 19), [1, 2, 3]);
    // 'A' top row is .###. → pixels 11..13 of row 2
    assert_eq!(c.get(10, 2), WHITE);
    assert_eq!(c.get(11, 2), BLACK);
    assert_eq!(c.get(0, 0), WHITE);
    assert_eq!(Canvas::text_width("abc", 2), 36);
}

#[test]
fn heatmap_panel_sizes_and_errors() {
    let s = 32;
    let rgb = vec![128u8; s * s * 3];
    let map: Vec<f32> = (0..s * s).map(|i| (i % s) as f32).collect();
    let mut mask = vec![0u8; s * s];
    mask[5 * s + 5] = 255;
    let with = heatmap_panel(&rgb, &map, Some(&mask), "SCORE 1.23").unwrap();
    let without = heatmap_panel(&rgb, &map, None, "X").unwrap();
    assert!(with.width > without.width);
    assert_eq!(with.height, without.height);
    let (w, h, _) = decode(&with.to_png().unwrap());
    assert_eq!((w as usize, h as usize), (with.width, with.height));
    assert!(heatmap_panel(&rgb, &map[1..], None, "bad").is_err());
    assert!(heatmap_panel(&rgb[3..], &map, None, "bad").is_err());
    assert!(heatmap_panel(&rgb, &map, Some(&mask[1..]), "bad").is_err());
}

#[test]
fn plots_have_fixed_size_and_survive_odd_data() {
    let vals: Vec<f64> = (0..500)
        .map(|i| ((i * 7919) % 1000) as f64 / 10.0)
        .collect();
    let h = histogram_plot(&vals, 20, "LATENCY", "MS");
    assert_eq!((h.width, h.height), (720, 420));
    let odd = histogram_plot(&[f64::NAN, 3.0, 3.0], 0, "t", "x");
    assert_eq!(odd.width, 720);
    let empty = histogram_plot(&[], 10, "t", "x");
    assert_eq!(empty.height, 420);
    let s = Series {
        name: "total".into(),
        points: vec![(50.0, 10.0), (90.0, 12.0), (99.0, 15.0), (99.9, 30.0)],
    };
    let l = line_plot(&[s], "PERCENTILES", "PERCENTILE", "MS");
    assert_eq!(decode(&l.to_png().unwrap()).0, 720);
    assert_eq!(format_number(0.5), "0.5");
    assert_eq!(format_number(1234.4), "1234");
    assert_eq!(format_number(12.5), "12.5");
}

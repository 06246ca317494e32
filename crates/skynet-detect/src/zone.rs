//! Zones: polygons drawn on a camera's image, in normalised coordinates.
//!
//! Coordinates are fractions of the frame (`[0, 1]`, origin top-left), so a zone stays put
//! when a camera's resolution changes.

use skynet_core::Point;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZoneError {
    #[error("a polygon needs at least 3 points, got {0}")]
    TooFewPoints(usize),
    #[error(
        "point {index} ({x}, {y}) is outside the frame: coordinates are fractions of the image, from 0 to 1"
    )]
    OutOfRange { index: usize, x: f64, y: f64 },
    #[error("the polygon has no area (its points are on one line or repeated)")]
    Degenerate,
    #[error("the polygon crosses itself: edge {first} intersects edge {second}")]
    SelfIntersecting { first: usize, second: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub name: String,
    points: Vec<Point>,
}

impl Zone {
    pub fn new(name: impl Into<String>, points: &[[f64; 2]]) -> Result<Self, ZoneError> {
        if points.len() < 3 {
            return Err(ZoneError::TooFewPoints(points.len()));
        }
        for (index, &[x, y]) in points.iter().enumerate() {
            if !(0.0..=1.0).contains(&x) || !(0.0..=1.0).contains(&y) {
                return Err(ZoneError::OutOfRange { index, x, y });
            }
        }
        let pts: Vec<Point> = points
            .iter()
            .map(|&[x, y]| Point {
                x: x as f32,
                y: y as f32,
            })
            .collect();
        let n = pts.len();
        for i in 0..n {
            for j in i + 1..n {
                // Adjacent edges share a vertex; that is not a crossing.
                if j == i + 1 || (i == 0 && j == n - 1) {
                    continue;
                }
                if segments_cross(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]) {
                    return Err(ZoneError::SelfIntersecting {
                        first: i,
                        second: j,
                    });
                }
            }
        }
        if signed_area(&pts).abs() < 1e-9 {
            return Err(ZoneError::Degenerate);
        }
        Ok(Self {
            name: name.into(),
            points: pts,
        })
    }

    /// Whether a point, in normalised coordinates, lies inside (even-odd rule).
    pub fn contains(&self, p: Point) -> bool {
        let mut inside = false;
        let n = self.points.len();
        let mut j = n - 1;
        for i in 0..n {
            let (a, b) = (self.points[i], self.points[j]);
            if (a.y > p.y) != (b.y > p.y) && p.x < (b.x - a.x) * (p.y - a.y) / (b.y - a.y) + a.x {
                inside = !inside;
            }
            j = i;
        }
        inside
    }

    pub fn area(&self) -> f32 {
        signed_area(&self.points).abs()
    }
}

fn signed_area(p: &[Point]) -> f32 {
    let n = p.len();
    (0..n)
        .map(|i| p[i].x * p[(i + 1) % n].y - p[(i + 1) % n].x * p[i].y)
        .sum::<f32>()
        / 2.0
}

fn orientation(a: Point, b: Point, c: Point) -> f32 {
    (b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x)
}

fn segments_cross(a: Point, b: Point, c: Point, d: Point) -> bool {
    let (o1, o2) = (orientation(a, b, c), orientation(a, b, d));
    let (o3, o4) = (orientation(c, d, a), orientation(c, d, b));
    (o1 * o2 < 0.0) && (o3 * o4 < 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUARE: [[f64; 2]; 4] = [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]];

    #[test]
    fn square_contains_its_centre_only() {
        let z = Zone::new("z", &SQUARE).unwrap();
        assert!(z.contains(Point { x: 0.5, y: 0.5 }));
        assert!(!z.contains(Point { x: 0.1, y: 0.5 }));
        assert!((z.area() - 0.36).abs() < 1e-6);
    }

    #[test]
    fn invalid_polygons_are_rejected_with_the_reason() {
        assert_eq!(
            Zone::new("z", &SQUARE[..2]),
            Err(ZoneError::TooFewPoints(2))
        );
        assert!(matches!(
            Zone::new("z", &[[0.0, 0.0], [1.5, 0.0], [0.0, 1.0]]),
            Err(ZoneError::OutOfRange { index: 1, .. })
        ));
        assert_eq!(
            Zone::new("z", &[[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]),
            Err(ZoneError::Degenerate)
        );
        let bowtie = [[0.2, 0.2], [0.8, 0.8], [0.8, 0.2], [0.2, 0.8]];
        assert!(matches!(
            Zone::new("z", &bowtie),
            Err(ZoneError::SelfIntersecting { .. })
        ));
    }
}

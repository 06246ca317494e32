//! Zones: polygons drawn on a camera's image, in normalised coordinates.
//!
//! Coordinates are fractions of the frame (`[0, 1]`, origin top-left), so a zone stays put
//! when a camera's resolution changes. The polygon, its validity and containment are `geo`'s.

use geo::algorithm::validation::InvalidPolygon;
use geo::{Area, Coord, Covers, Intersects, Line, LineString, Polygon, Validation};
use skynet_core::{FramePolygonError, Point};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZoneError {
    /// Too few points, or a point outside the frame: the checks every frame polygon shares.
    #[error(transparent)]
    Frame(#[from] FramePolygonError),
    #[error("the polygon has no area (its points are on one line or repeated)")]
    Degenerate,
    /// Edge `i` runs from point `i` to point `i + 1` (the last back to point 0).
    #[error("the polygon crosses itself: edge {first} intersects edge {second}")]
    SelfIntersecting { first: usize, second: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub name: String,
    polygon: Polygon<f64>,
}

impl Zone {
    pub fn new(name: impl Into<String>, points: &[[f64; 2]]) -> Result<Self, ZoneError> {
        skynet_core::check_frame_polygon(points)?;
        let coords: Vec<Coord<f64>> = points.iter().map(|&[x, y]| Coord { x, y }).collect();
        // `Polygon::new` closes the ring; the config lists each corner once.
        let polygon = Polygon::new(LineString::new(coords.clone()), Vec::new());
        match polygon.check_validation() {
            Ok(()) => {}
            Err(InvalidPolygon::SelfIntersection(_)) => {
                // geo says that it crosses, not where; name the edges for the person fixing it.
                let (first, second) = crossing_edges(&coords).unwrap_or((0, 0));
                return Err(ZoneError::SelfIntersecting { first, second });
            }
            // Fewer than 3 distinct points: the repeats leave no area.
            Err(_) => return Err(ZoneError::Degenerate),
        }
        // A valid ring can still lie on one line (geo does not treat that as crossing).
        if polygon.unsigned_area() < 1e-9 {
            return Err(ZoneError::Degenerate);
        }
        Ok(Self {
            name: name.into(),
            polygon,
        })
    }

    /// Whether a point, in normalised coordinates, lies inside the zone or on its border.
    pub fn contains(&self, p: Point) -> bool {
        // The border counts: a zone drawn to the frame's edge must catch an object whose box
        // is clamped to that edge (its feet are then exactly on the border).
        self.polygon
            .covers(&geo::Point::new(f64::from(p.x), f64::from(p.y)))
    }

    /// The corners, as `[x, y]` fractions of the frame (for drawing the outline).
    pub fn points(&self) -> Vec<[f64; 2]> {
        let ring = &self.polygon.exterior().0;
        // The ring is closed: its last point repeats the first.
        let open = ring.len().saturating_sub(1);
        ring[..open].iter().map(|c| [c.x, c.y]).collect()
    }

    /// The zone's area as a fraction of the frame.
    pub fn area(&self) -> f32 {
        self.polygon.unsigned_area() as f32
    }
}

/// The first pair of non-adjacent edges that meet, by the same test geo's validation uses
/// (edges sharing an end point in ring order do not count).
fn crossing_edges(points: &[Coord<f64>]) -> Option<(usize, usize)> {
    let n = points.len();
    let edges: Vec<Line<f64>> = (0..n)
        .map(|i| Line::new(points[i], points[(i + 1) % n]))
        .collect();
    (0..n).find_map(|i| {
        (i + 1..n)
            .find(|&j| {
                let (a, b) = (edges[i], edges[j]);
                // Symmetric in a and b, so one order per pair is enough.
                a.intersects(&b) && a.start != b.end && a.end != b.start
            })
            .map(|j| (i, j))
    })
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
    fn the_border_counts_so_a_zone_to_the_frame_edge_catches_clamped_boxes() {
        let z = Zone::new("bottom", &[[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]).unwrap();
        assert!(z.contains(Point { x: 0.5, y: 1.0 }));
        assert!(!z.contains(Point { x: 0.5, y: 0.4 }));
    }

    #[test]
    fn invalid_polygons_are_rejected_with_the_reason() {
        assert_eq!(
            Zone::new("z", &SQUARE[..2]),
            Err(ZoneError::Frame(FramePolygonError::TooFewPoints(2)))
        );
        assert!(matches!(
            Zone::new("z", &[[0.0, 0.0], [1.5, 0.0], [0.0, 1.0]]),
            Err(ZoneError::Frame(FramePolygonError::OutOfRange {
                index: 1,
                ..
            }))
        ));
        assert!(matches!(
            Zone::new("z", &[[0.0, 0.0], [f64::NAN, 0.0], [0.0, 1.0]]),
            Err(ZoneError::Frame(FramePolygonError::OutOfRange {
                index: 1,
                ..
            }))
        ));
        assert_eq!(
            Zone::new("z", &[[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]),
            Err(ZoneError::Degenerate)
        );
        assert_eq!(
            Zone::new("z", &[[0.1, 0.1], [0.1, 0.1], [0.5, 0.5]]),
            Err(ZoneError::Degenerate)
        );
        let bowtie = [[0.2, 0.2], [0.8, 0.8], [0.8, 0.2], [0.2, 0.8]];
        assert!(matches!(
            Zone::new("z", &bowtie),
            Err(ZoneError::SelfIntersecting { .. })
        ));
        assert_eq!(
            Zone::new("z", &bowtie).unwrap_err().to_string(),
            "the polygon crosses itself: edge 0 intersects edge 2"
        );
    }
}

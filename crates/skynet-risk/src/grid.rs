//! Grid cells (網格) from a GeoJSON FeatureCollection of polygons.
//!
//! Each feature needs `properties.id`; `properties.name` is optional. Coordinates are
//! `[longitude, latitude]`, as GeoJSON requires. The file is read with the `geojson` crate and
//! each cell becomes a `geo` multipolygon, so holes count: a point in a hole is outside the cell.

use std::path::{Path, PathBuf};

use geo::{Coord, Covers, LineString, MultiPolygon, Polygon, Validation};
use geojson::{FeatureCollection, GeometryValue, JsonValue, PolygonType, Position};
use skynet_core::GridId;

#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("grid file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("grid file {path}:{line}:{column}: {reason}")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    /// A feature that parsed as GeoJSON but is not a usable cell. `id` is its
    /// `properties.id` when it has one, so the message names the cell, not just its position.
    #[error("grid file {path}: feature {index}{}: {reason}", .id.as_ref().map(|id| format!(" (`{id}`)")).unwrap_or_default())]
    Feature {
        path: PathBuf,
        index: usize,
        id: Option<String>,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct Grid {
    pub id: GridId,
    pub name: Option<String>,
    /// The cell's area, `x` = longitude, `y` = latitude; a Polygon feature is a multipolygon
    /// of one, so both geometry types are tested the same way.
    area: MultiPolygon<f64>,
}

impl Grid {
    /// Whether the point lies in the cell or on its border; a point in a hole is outside.
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        // `covers` rather than `contains`: a camera placed exactly on a cell's border still
        // belongs to a cell (the first listed, see `GridMap::locate`) instead of to none.
        self.area.covers(&geo::Point::new(lon, lat))
    }
}

#[derive(Debug, Clone, Default)]
pub struct GridMap {
    grids: Vec<Grid>,
}

impl GridMap {
    pub fn load(path: &Path) -> Result<Self, GridError> {
        let text = std::fs::read_to_string(path).map_err(|source| GridError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, GridError> {
        // serde_json directly (not `FeatureCollection::from_str`) keeps the line and column of
        // a syntax or shape error.
        let collection: FeatureCollection =
            serde_json::from_str(text).map_err(|e| GridError::Json {
                path: path.to_path_buf(),
                line: e.line(),
                column: e.column(),
                reason: e.to_string(),
            })?;
        let mut grids: Vec<Grid> = Vec::with_capacity(collection.features.len());
        for (index, feature) in collection.features.iter().enumerate() {
            let id = feature.property("id").and_then(|v| match v {
                JsonValue::String(s) => Some(s.clone()),
                // Integer ids were accepted before; keep accepting them.
                JsonValue::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
                _ => None,
            });
            let bad = |reason: String| GridError::Feature {
                path: path.to_path_buf(),
                index,
                id: id.clone(),
                reason,
            };
            let Some(id) = id.as_deref() else {
                return Err(bad("needs a string `properties.id`".into()));
            };
            skynet_core::validate_id("grid", id).map_err(bad)?;
            if grids.iter().any(|g| g.id.as_str() == id) {
                return Err(bad(format!("grid id `{id}` appears twice")));
            }
            let name = match feature.property("name") {
                None | Some(JsonValue::Null) => None,
                Some(JsonValue::String(s)) => Some(s.clone()),
                Some(_) => return Err(bad("`properties.name` must be a string".into())),
            };
            let geometry = feature
                .geometry
                .as_ref()
                .ok_or_else(|| bad("has no geometry".into()))?;
            let area = cell_area(&geometry.value).map_err(bad)?;
            grids.push(Grid {
                id: GridId::new(id),
                name,
                area,
            });
        }
        Ok(Self { grids })
    }

    pub fn get(&self, id: &str) -> Option<&Grid> {
        self.grids.iter().find(|g| g.id.as_str() == id)
    }

    /// The cell containing a point; the first listed wins where cells overlap or touch.
    pub fn locate(&self, lon: f64, lat: f64) -> Option<&Grid> {
        self.grids.iter().find(|g| g.contains(lon, lat))
    }

    pub fn grids(&self) -> &[Grid] {
        &self.grids
    }

    pub fn ids(&self) -> Vec<String> {
        self.grids.iter().map(|g| g.id.to_string()).collect()
    }
}

/// A feature's geometry as a valid multipolygon, or why it is not one.
fn cell_area(geometry: &GeometryValue) -> Result<MultiPolygon<f64>, String> {
    // geo's OGC validity: rings simple and not crossing, holes inside their shell, the
    // polygons of a MultiPolygon not overlapping. A cell that breaks these would make
    // `locate` answer differently depending on how the points happen to be ordered.
    let invalid = |problem: &dyn std::fmt::Display| format!("invalid geometry: {problem}");
    match geometry {
        GeometryValue::Polygon { coordinates } => {
            let polygon = polygon(coordinates).map_err(|r| format!("polygon: {r}"))?;
            // Checked as a Polygon, so the message does not talk of a polygon "at index 0".
            polygon.check_validation().map_err(|p| invalid(&p))?;
            Ok(MultiPolygon::new(vec![polygon]))
        }
        GeometryValue::MultiPolygon { coordinates } => {
            if coordinates.is_empty() {
                return Err("the MultiPolygon has no polygons".into());
            }
            let polygons = coordinates
                .iter()
                .enumerate()
                .map(|(i, p)| polygon(p).map_err(|r| format!("polygon {i}: {r}")))
                .collect::<Result<Vec<_>, _>>()?;
            let area = MultiPolygon::new(polygons);
            area.check_validation().map_err(|p| invalid(&p))?;
            Ok(area)
        }
        other => Err(format!(
            "geometry type `{}` is not a Polygon or MultiPolygon",
            other.type_name()
        )),
    }
}

/// One GeoJSON polygon (outer ring, then holes) as a `geo` polygon, checking each position.
fn polygon(rings: &PolygonType) -> Result<Polygon<f64>, String> {
    let Some((outer, holes)) = rings.split_first() else {
        return Err("a polygon needs an outer ring".into());
    };
    let ring = |positions: &Vec<Position>, which: &str| -> Result<LineString<f64>, String> {
        // GeoJSON rings are closed, so a triangle takes 4 positions.
        if positions.len() < 4 {
            return Err(format!(
                "{which} needs at least 4 positions (closed), got {}",
                positions.len()
            ));
        }
        positions
            .iter()
            .map(|p| match p.as_slice() {
                // A third value (altitude) is allowed by GeoJSON and ignored here.
                &[lon, lat, ..]
                    if (-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat) =>
                {
                    Ok(Coord { x: lon, y: lat })
                }
                other => Err(format!(
                    "{which}: position {other:?} is not [longitude, latitude] within [-180, 180] and [-90, 90]"
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(LineString::new)
    };
    let exterior = ring(outer, "the outer ring")?;
    let interiors = holes
        .iter()
        .enumerate()
        .map(|(i, h)| ring(h, &format!("hole {i}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Polygon::new(exterior, interiors))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CELLS: &str = r#"{"type": "FeatureCollection", "features": [
      {"type": "Feature", "properties": {"id": "A", "name": "west"},
       "geometry": {"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,1],[0,0]]]}},
      {"type": "Feature", "properties": {"id": "B"},
       "geometry": {"type": "MultiPolygon", "coordinates": [[[[1,0],[2,0],[2,1],[1,1],[1,0]]]]}}
    ]}"#;

    fn parse(text: &str) -> Result<GridMap, GridError> {
        GridMap::parse(Path::new("t.geojson"), text)
    }

    fn one_feature(properties: &str, geometry: &str) -> String {
        format!(
            r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{properties},"geometry":{geometry}}}]}}"#
        )
    }

    #[test]
    fn locates_points_in_cells() {
        let map = parse(TWO_CELLS).unwrap();
        assert_eq!(map.locate(0.5, 0.5).map(|g| g.id.as_str()), Some("A"));
        assert_eq!(map.locate(1.5, 0.5).map(|g| g.id.as_str()), Some("B"));
        assert!(map.locate(5.0, 5.0).is_none());
        assert_eq!(map.get("A").and_then(|g| g.name.as_deref()), Some("west"));
        assert_eq!(map.ids(), vec!["A", "B"]);
        // On the shared border the first listed cell wins.
        assert_eq!(map.locate(1.0, 0.5).map(|g| g.id.as_str()), Some("A"));
    }

    #[test]
    fn a_point_in_a_hole_is_outside_the_cell() {
        let ring = "[[0,0],[4,0],[4,4],[0,4],[0,0]], [[1,1],[3,1],[3,3],[1,3],[1,1]]";
        let text = one_feature(
            r#"{"id": "ring"}"#,
            &format!(r#"{{"type": "Polygon", "coordinates": [{ring}]}}"#),
        );
        let map = parse(&text).unwrap();
        assert!(map.locate(2.0, 2.0).is_none(), "in the hole");
        assert_eq!(map.locate(0.5, 2.0).map(|g| g.id.as_str()), Some("ring"));
        // The same in a MultiPolygon.
        let multi = one_feature(
            r#"{"id": "ring"}"#,
            &format!(r#"{{"type": "MultiPolygon", "coordinates": [[{ring}]]}}"#),
        );
        let map = parse(&multi).unwrap();
        assert!(map.locate(2.0, 2.0).is_none());
        assert!(map.locate(3.5, 3.5).is_some());
    }

    #[test]
    fn errors_name_the_place() {
        let err = parse("{\n  \"type\": ").unwrap_err().to_string();
        assert!(err.starts_with("grid file t.geojson:2:"), "{err}");
        let err = parse(r#"{"type": "Feature", "properties": {}, "geometry": null}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("grid file t.geojson:1:"), "{err}");
        let no_id = one_feature("{}", "null");
        let err = parse(&no_id).unwrap_err().to_string();
        assert!(
            err.contains("feature 0") && err.contains("properties.id"),
            "{err}"
        );
    }

    #[test]
    fn invalid_cells_are_rejected_naming_the_feature_and_problem() {
        let square = r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}"#;
        let cases = [
            (
                one_feature(r#"{"id": "a b"}"#, square),
                "feature 0 (`a b`): grid id `a b` has ` `",
            ),
            (
                one_feature(
                    r#"{"id": "bow"}"#,
                    r#"{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}"#,
                ),
                "feature 0 (`bow`): invalid geometry: exterior ring has a self-intersection",
            ),
            (
                one_feature(
                    r#"{"id": "hole-out"}"#,
                    r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]],[[2,2],[3,2],[3,3],[2,2]]]}"#,
                ),
                "feature 0 (`hole-out`): invalid geometry: interior ring at index 0 is not contained",
            ),
            (
                one_feature(
                    r#"{"id": "overlap"}"#,
                    r#"{"type":"MultiPolygon","coordinates":[[[[0,0],[2,0],[2,2],[0,2],[0,0]]],[[[1,1],[3,1],[3,3],[1,3],[1,1]]]]}"#,
                ),
                "feature 0 (`overlap`): invalid geometry: polygons at indices 0 and 1 overlap",
            ),
            (
                one_feature(
                    r#"{"id": "far"}"#,
                    r#"{"type":"Polygon","coordinates":[[[0,0],[200,0],[1,1],[0,0]]]}"#,
                ),
                "feature 0 (`far`): polygon: the outer ring: position [200.0, 0.0] is not",
            ),
            (
                one_feature(
                    r#"{"id": "short"}"#,
                    r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}"#,
                ),
                "needs at least 4 positions (closed), got 3",
            ),
            (
                one_feature(r#"{"id": "pt"}"#, r#"{"type":"Point","coordinates":[0,0]}"#),
                "geometry type `Point` is not a Polygon or MultiPolygon",
            ),
            (
                one_feature(r#"{"id": "none"}"#, "null"),
                "feature 0 (`none`): has no geometry",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}\n  expected: {expected}");
        }
        let twice = format!(
            r#"{{"type":"FeatureCollection","features":[{f},{f}]}}"#,
            f = format!(
                r#"{{"type":"Feature","properties":{{"id":"A"}},"geometry":{}}}"#,
                r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,0]]]}"#
            )
        );
        let err = parse(&twice).unwrap_err().to_string();
        assert!(
            err.contains("feature 1 (`A`): grid id `A` appears twice"),
            "{err}"
        );
    }
}

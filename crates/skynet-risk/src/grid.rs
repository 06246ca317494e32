//! Grid cells (網格) from a GeoJSON FeatureCollection of polygons.
//!
//! Each feature needs `properties.id`; `properties.name` is optional. Coordinates are
//! `[longitude, latitude]`, as GeoJSON requires.

use std::path::{Path, PathBuf};

use serde_json::Value;
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
    #[error("grid file {path}: feature {index}: {reason}")]
    Feature {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct Grid {
    pub id: GridId,
    pub name: Option<String>,
    /// Outer rings of the cell's polygons, `(lon, lat)`.
    rings: Vec<Vec<(f64, f64)>>,
}

impl Grid {
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        self.rings.iter().any(|ring| ring_contains(ring, lon, lat))
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
        let value: Value = serde_json::from_str(text).map_err(|e| GridError::Json {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            reason: e.to_string(),
        })?;
        let top_err = |reason: &str| GridError::Json {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            reason: reason.to_string(),
        };
        if value.get("type").and_then(Value::as_str) != Some("FeatureCollection") {
            return Err(top_err("expected a GeoJSON FeatureCollection"));
        }
        let features = value
            .get("features")
            .and_then(Value::as_array)
            .ok_or_else(|| top_err("`features` must be an array"))?;
        let mut grids: Vec<Grid> = Vec::with_capacity(features.len());
        for (index, feature) in features.iter().enumerate() {
            let bad = |reason: String| GridError::Feature {
                path: path.to_path_buf(),
                index,
                reason,
            };
            let id = feature
                .pointer("/properties/id")
                .and_then(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .or_else(|| v.as_i64().map(|n| n.to_string()))
                })
                .ok_or_else(|| bad("needs a string `properties.id`".into()))?;
            if grids.iter().any(|g| g.id.as_str() == id) {
                return Err(bad(format!("grid id `{id}` appears twice")));
            }
            let name = feature
                .pointer("/properties/name")
                .and_then(Value::as_str)
                .map(str::to_string);
            let geometry = feature
                .get("geometry")
                .ok_or_else(|| bad("has no geometry".into()))?;
            let rings = outer_rings(geometry).map_err(|r| bad(format!("grid `{id}`: {r}")))?;
            grids.push(Grid {
                id: GridId::new(id),
                name,
                rings,
            });
        }
        Ok(Self { grids })
    }

    pub fn get(&self, id: &str) -> Option<&Grid> {
        self.grids.iter().find(|g| g.id.as_str() == id)
    }

    /// The cell containing a point; the first listed wins where cells overlap.
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

fn outer_rings(geometry: &Value) -> Result<Vec<Vec<(f64, f64)>>, String> {
    let kind = geometry.get("type").and_then(Value::as_str).unwrap_or("");
    let coords = geometry
        .get("coordinates")
        .ok_or("geometry has no coordinates")?;
    let polygons: Vec<&Value> = match kind {
        "Polygon" => vec![coords],
        "MultiPolygon" => coords
            .as_array()
            .ok_or("MultiPolygon coordinates must be an array")?
            .iter()
            .collect(),
        other => {
            return Err(format!(
                "geometry type `{other}` is not a Polygon or MultiPolygon"
            ));
        }
    };
    polygons
        .into_iter()
        .map(|polygon| {
            let outer = polygon
                .get(0)
                .and_then(Value::as_array)
                .ok_or("a polygon needs an outer ring")?;
            let ring: Vec<(f64, f64)> = outer
                .iter()
                .map(|p| {
                    match (
                        p.get(0).and_then(Value::as_f64),
                        p.get(1).and_then(Value::as_f64),
                    ) {
                        (Some(lon), Some(lat))
                            if (-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat) =>
                        {
                            Ok((lon, lat))
                        }
                        _ => Err(format!("position {p} is not [longitude, latitude]")),
                    }
                })
                .collect::<Result<_, _>>()?;
            if ring.len() < 4 {
                return Err(format!(
                    "a ring needs at least 4 positions (closed), got {}",
                    ring.len()
                ));
            }
            Ok(ring)
        })
        .collect()
}

fn ring_contains(ring: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = ring.len() - 1;
    for i in 0..ring.len() {
        let ((xi, yi), (xj, yj)) = (ring[i], ring[j]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
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

    #[test]
    fn locates_points_in_cells() {
        let map = GridMap::parse(Path::new("t.geojson"), TWO_CELLS).unwrap();
        assert_eq!(map.locate(0.5, 0.5).map(|g| g.id.as_str()), Some("A"));
        assert_eq!(map.locate(1.5, 0.5).map(|g| g.id.as_str()), Some("B"));
        assert!(map.locate(5.0, 5.0).is_none());
        assert_eq!(map.get("A").and_then(|g| g.name.as_deref()), Some("west"));
    }

    #[test]
    fn errors_name_the_place() {
        let err = GridMap::parse(Path::new("t.geojson"), "{\n  \"type\": ")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("grid file t.geojson:2:"), "{err}");
        let no_id = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},"geometry":null}]}"#;
        let err = GridMap::parse(Path::new("t.geojson"), no_id)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("feature 0") && err.contains("properties.id"),
            "{err}"
        );
    }
}

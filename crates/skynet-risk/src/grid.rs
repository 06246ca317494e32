//! Grid cells (網格): polygons from a GeoJSON FeatureCollection, or generated H3 hexagons.
//!
//! Each feature needs `properties.id`; `name`, `kind`, `street` and `department` are optional.
//! Coordinates are `[longitude, latitude]`, as GeoJSON requires. The file is read with the
//! `geojson` crate and each cell becomes a `geo` multipolygon, so holes count: a point in a hole
//! is outside the cell. Cells may share borders but not area, so a point has one cell (on a
//! shared border, the first listed).
//!
//! Where a city has no cell file, [`GridMap::h3`] uses the H3 hexagons of one resolution
//! instead: cells are computed from coordinates and ids, never listed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use geo::coordinate_position::CoordPos;
use geo::dimensions::Dimensions;
use geo::{
    Area, BoundingRect, Coord, Covers, LineString, MultiPolygon, Polygon, Relate, Validation,
};
use geojson::{Feature, FeatureCollection, GeometryValue, JsonValue, PolygonType, Position};
use h3o::{CellIndex, LatLng, Resolution};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};
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
    /// A file without cells would leave every camera and sensor without a grid; better said
    /// at load than as "outside every grid cell" for each of them.
    #[error("grid file {path}: the FeatureCollection has no features")]
    NoFeatures { path: PathBuf },
    /// An unusable setting of a generated H3 grid. `setting` (`resolution` or `kind`) lets a
    /// config reader point at the key that is wrong.
    #[error("H3 grid: {reason}")]
    H3 {
        setting: &'static str,
        reason: String,
    },
}

/// What callers need to know of a cell. Owned, because H3 cells are generated on demand and
/// have no stored [`Grid`] to borrow from.
#[derive(Debug, Clone, PartialEq)]
pub struct CellInfo {
    pub id: GridId,
    pub name: Option<String>,
    /// A lower-case token like `residential`, `school` or `construction_site`.
    pub kind: Option<String>,
    pub street: Option<String>,
    pub department: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Grid {
    pub id: GridId,
    pub name: Option<String>,
    /// A lower-case token like `residential`, `school` or `construction_site`.
    pub kind: Option<String>,
    pub street: Option<String>,
    /// Who answers for the cell (a street office, a district bureau).
    pub department: Option<String>,
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

    /// The cell as a GeoJSON feature (for maps): its area, with `id`, `name`, `kind`,
    /// `street` and `department` as properties.
    pub fn to_feature(&self) -> serde_json::Value {
        let polygons: Vec<serde_json::Value> = self
            .area
            .0
            .iter()
            .map(|polygon| {
                let ring = |line: &geo::LineString<f64>| -> Vec<[f64; 2]> {
                    line.0.iter().map(|c| [c.x, c.y]).collect()
                };
                let mut rings = vec![ring(polygon.exterior())];
                rings.extend(polygon.interiors().iter().map(ring));
                serde_json::json!(rings)
            })
            .collect();
        serde_json::json!({
            "type": "Feature",
            "id": self.id,
            "geometry": {"type": "MultiPolygon", "coordinates": polygons},
            "properties": {
                "id": self.id,
                "name": self.name,
                "kind": self.kind,
                "street": self.street,
                "department": self.department,
            },
        })
    }

    pub fn info(&self) -> CellInfo {
        CellInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            kind: self.kind.clone(),
            street: self.street.clone(),
            department: self.department.clone(),
        }
    }
}

/// A cell's bounding box in the index, with the cell's position in the file.
type CellBox = GeomWithData<Rectangle<[f64; 2]>, usize>;

#[derive(Debug, Clone, Default)]
pub struct GridMap {
    cells: Cells,
}

#[derive(Debug, Clone)]
enum Cells {
    Polygons(Polygons),
    H3(H3Cells),
}

impl Default for Cells {
    fn default() -> Self {
        Self::Polygons(Polygons::default())
    }
}

#[derive(Debug, Clone, Default)]
struct Polygons {
    /// In file order, which decides the cell of a point on a shared border.
    grids: Vec<Grid>,
    /// Bounding boxes, so a lookup tests only the few cells near a point, not all of them.
    index: RTree<CellBox>,
    by_id: HashMap<String, usize>,
    /// Per cell, the cells it touches, sorted by id; computed once at load.
    neighbours: Vec<Vec<GridId>>,
}

#[derive(Debug, Clone)]
struct H3Cells {
    resolution: Resolution,
    kind: Option<String>,
    department: Option<String>,
}

impl H3Cells {
    fn info(&self, cell: CellIndex) -> CellInfo {
        CellInfo {
            id: GridId::new(cell.to_string()),
            name: None,
            kind: self.kind.clone(),
            street: None,
            department: self.department.clone(),
        }
    }

    /// The H3 cell an id names, when it is one at this grid's resolution.
    fn parse(&self, id: &str) -> Option<CellIndex> {
        // `from_str_radix` would also take a sign; an id is hex digits only.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let cell: CellIndex = id.parse().ok()?;
        (cell.resolution() == self.resolution).then_some(cell)
    }
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
        if collection.features.is_empty() {
            return Err(GridError::NoFeatures {
                path: path.to_path_buf(),
            });
        }
        let mut cells = Polygons::default();
        let mut touching: Vec<Vec<usize>> = Vec::with_capacity(collection.features.len());
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
            if cells.by_id.contains_key(id) {
                return Err(bad(format!("grid id `{id}` appears twice")));
            }
            let name = optional_string(feature, "name").map_err(bad)?;
            let kind = optional_string(feature, "kind").map_err(bad)?;
            if let Some(kind) = &kind {
                validate_kind(kind).map_err(|r| bad(format!("`properties.kind`: {r}")))?;
            }
            let street = optional_string(feature, "street").map_err(bad)?;
            let department = optional_string(feature, "department").map_err(bad)?;
            let geometry = feature
                .geometry
                .as_ref()
                .ok_or_else(|| bad("has no geometry".into()))?;
            let area = cell_area(&geometry.value).map_err(bad)?;
            let bbox = area
                .bounding_rect()
                .ok_or_else(|| bad("has zero area".into()))?;
            let (min, max) = (bbox.min(), bbox.max());
            // Candidates by bounding box, in file order so the error names the first overlap.
            let mut near: Vec<usize> = cells
                .index
                .locate_in_envelope_intersecting(&AABB::from_corners(
                    [min.x, min.y],
                    [max.x, max.y],
                ))
                .map(|b| b.data)
                .collect();
            near.sort_unstable();
            let mut touches = Vec::new();
            for other in near {
                let matrix = area.relate(&cells.grids[other].area);
                // Interiors meeting means some point would be in two cells; sharing only a
                // border or a corner is how a tiling looks and is fine.
                if matrix.get(CoordPos::Inside, CoordPos::Inside) != Dimensions::Empty {
                    return Err(bad(format!(
                        "overlaps feature {other} (`{}`): cells may share borders, not area",
                        cells.grids[other].id
                    )));
                }
                if matrix.is_intersects() {
                    touches.push(other);
                }
            }
            for &other in &touches {
                touching[other].push(index);
            }
            touching.push(touches);
            cells.index.insert(CellBox::new(
                Rectangle::from_corners([min.x, min.y], [max.x, max.y]),
                index,
            ));
            cells.by_id.insert(id.to_string(), index);
            cells.grids.push(Grid {
                id: GridId::new(id),
                name,
                kind,
                street,
                department,
                area,
            });
        }
        cells.neighbours = touching
            .into_iter()
            .map(|near| {
                let mut ids: Vec<GridId> = near
                    .into_iter()
                    .map(|i| cells.grids[i].id.clone())
                    .collect();
                ids.sort();
                ids
            })
            .collect();
        Ok(Self {
            cells: Cells::Polygons(cells),
        })
    }

    /// The H3 hexagons at `resolution` (0, coarsest, to 15), every one with the given `kind`
    /// and `department`: for a city without a cell file.
    pub fn h3(
        resolution: u8,
        kind: Option<String>,
        department: Option<String>,
    ) -> Result<Self, GridError> {
        let resolution = Resolution::try_from(resolution).map_err(|_| GridError::H3 {
            setting: "resolution",
            reason: format!(
                "resolution {resolution} is out of range: H3 has 0 (coarsest) to 15 (finest)"
            ),
        })?;
        if let Some(kind) = &kind {
            validate_kind(kind).map_err(|reason| GridError::H3 {
                setting: "kind",
                reason,
            })?;
        }
        Ok(Self {
            cells: Cells::H3(H3Cells {
                resolution,
                kind,
                department,
            }),
        })
    }

    /// The cell with this id. In H3 mode, any valid cell index at the grid's resolution; its
    /// id is the index's canonical (lower-case hex) spelling.
    pub fn cell(&self, id: &str) -> Option<CellInfo> {
        match &self.cells {
            Cells::Polygons(p) => p.by_id.get(id).map(|&i| p.grids[i].info()),
            Cells::H3(h3) => h3.parse(id).map(|cell| h3.info(cell)),
        }
    }

    /// The cell containing a point; on a border shared by several cells, the first listed.
    pub fn locate(&self, lon: f64, lat: f64) -> Option<CellInfo> {
        if !((-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat)) {
            return None;
        }
        match &self.cells {
            Cells::Polygons(p) => p
                .index
                .locate_all_at_point(&[lon, lat])
                .map(|b| b.data)
                .filter(|&i| p.grids[i].contains(lon, lat))
                .min()
                .map(|i| p.grids[i].info()),
            Cells::H3(h3) => {
                let point = LatLng::new(lat, lon).ok()?;
                Some(h3.info(point.to_cell(h3.resolution)))
            }
        }
    }

    /// The cells touching this one (a shared border or corner), sorted by id, without itself;
    /// empty for an unknown id.
    pub fn neighbours(&self, id: &str) -> Vec<GridId> {
        self.neighbours_of(id).into_owned()
    }

    /// [`neighbours`](Self::neighbours) without a copy for polygon cells (the risk engine
    /// asks on every observation a neighbourhood fusion rule concerns).
    pub fn neighbours_of(&self, id: &str) -> std::borrow::Cow<'_, [GridId]> {
        match &self.cells {
            Cells::Polygons(p) => p
                .by_id
                .get(id)
                .map_or(std::borrow::Cow::Borrowed(&[][..]), |&i| {
                    std::borrow::Cow::Borrowed(p.neighbours[i].as_slice())
                }),
            Cells::H3(h3) => {
                let Some(cell) = h3.parse(id) else {
                    return Vec::new().into();
                };
                let mut ids: Vec<GridId> = cell
                    .grid_disk::<Vec<_>>(1)
                    .into_iter()
                    .filter(|&c| c != cell)
                    .map(|c| GridId::new(c.to_string()))
                    .collect();
                ids.sort();
                std::borrow::Cow::Owned(ids)
            }
        }
    }

    /// The polygon cells in file order; empty for H3, whose cells are not listed.
    pub fn grids(&self) -> &[Grid] {
        match &self.cells {
            Cells::Polygons(p) => &p.grids,
            Cells::H3(_) => &[],
        }
    }

    /// The polygon cells' ids in file order; empty for H3.
    pub fn ids(&self) -> Vec<String> {
        self.grids().iter().map(|g| g.id.to_string()).collect()
    }

    /// For messages: "4 cells", or "H3 cells at resolution 9".
    pub fn describe(&self) -> String {
        match &self.cells {
            Cells::Polygons(p) if p.grids.len() == 1 => "1 cell".into(),
            Cells::Polygons(p) => format!("{} cells", p.grids.len()),
            Cells::H3(h3) => format!("H3 cells at resolution {}", h3.resolution),
        }
    }

    pub fn is_h3(&self) -> bool {
        matches!(self.cells, Cells::H3(_))
    }

    /// The H3 resolution in H3 mode, for messages about cell ids.
    pub fn h3_resolution(&self) -> Option<u8> {
        match &self.cells {
            Cells::Polygons(_) => None,
            Cells::H3(h3) => Some(u8::from(h3.resolution)),
        }
    }
}

/// An optional string property: absent and `null` are `None`, another type is an error.
fn optional_string(feature: &Feature, key: &str) -> Result<Option<String>, String> {
    match feature.property(key) {
        None | Some(JsonValue::Null) => Ok(None),
        Some(JsonValue::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`properties.{key}` must be a string")),
    }
}

/// A cell kind is a token that rules and reports match on, so one spelling per kind:
/// lower case, digits and `_`, like `residential` or `construction_site`.
fn validate_kind(kind: &str) -> Result<(), String> {
    let token = (1..=64).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if token {
        Ok(())
    } else {
        Err(format!(
            "kind `{}` must be 1 to 64 of `a-z`, `0-9` and `_`, like `residential` or `construction_site`",
            kind.escape_debug()
        ))
    }
}

/// Whether a ring's positions all lie on one line (or are one point): a polygon without
/// area. Checked before validity so such a cell is called empty, not self-intersecting.
fn is_flat(ring: &LineString<f64>) -> bool {
    let Some(&a) = ring.coords().next() else {
        return true;
    };
    let Some(&b) = ring.coords().find(|&&c| c != a) else {
        return true;
    };
    let u = b - a;
    ring.coords().all(|&c| {
        let v = c - a;
        u.x * v.y - u.y * v.x == 0.0
    })
}

/// A cell no point can be in: its positions lie on one line, or its holes fill it.
const ZERO_AREA: &str = "has zero area";

/// A feature's geometry as a valid multipolygon, or why it is not one.
fn cell_area(geometry: &GeometryValue) -> Result<MultiPolygon<f64>, String> {
    // geo's OGC validity: rings simple and not crossing, holes inside their shell, the
    // polygons of a MultiPolygon not overlapping. A cell that breaks these would make
    // `locate` answer differently depending on how the points happen to be ordered.
    let invalid = |problem: &dyn std::fmt::Display| format!("invalid geometry: {problem}");
    match geometry {
        GeometryValue::Polygon { coordinates } => {
            let polygon = polygon(coordinates).map_err(|r| format!("polygon: {r}"))?;
            if is_flat(polygon.exterior()) {
                return Err(ZERO_AREA.into());
            }
            // Checked as a Polygon, so the message does not talk of a polygon "at index 0".
            polygon.check_validation().map_err(|p| invalid(&p))?;
            if polygon.unsigned_area() == 0.0 {
                return Err(ZERO_AREA.into());
            }
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
            if let Some(i) = polygons.iter().position(|p| is_flat(p.exterior())) {
                return Err(format!("polygon {i} {ZERO_AREA}"));
            }
            let area = MultiPolygon::new(polygons);
            area.check_validation().map_err(|p| invalid(&p))?;
            if let Some(i) = area.iter().position(|p| p.unsigned_area() == 0.0) {
                return Err(format!("polygon {i} {ZERO_AREA}"));
            }
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

    /// The id of the cell at a point, as a plain string for comparisons.
    fn at(map: &GridMap, lon: f64, lat: f64) -> Option<String> {
        map.locate(lon, lat).map(|c| c.id.to_string())
    }

    fn square(x: i32, y: i32) -> String {
        format!(
            r#"{{"type":"Polygon","coordinates":[[[{x},{y}],[{x1},{y}],[{x1},{y1}],[{x},{y1}],[{x},{y}]]]}}"#,
            x1 = x + 1,
            y1 = y + 1
        )
    }

    /// A collection of `(properties, geometry)` features.
    fn features(list: &[(&str, &str)]) -> String {
        let features: Vec<String> = list
            .iter()
            .map(|(p, g)| format!(r#"{{"type":"Feature","properties":{p},"geometry":{g}}}"#))
            .collect();
        format!(
            r#"{{"type":"FeatureCollection","features":[{}]}}"#,
            features.join(",")
        )
    }

    fn one_feature(properties: &str, geometry: &str) -> String {
        format!(
            r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{properties},"geometry":{geometry}}}]}}"#
        )
    }

    #[test]
    fn locates_points_in_cells() {
        let map = parse(TWO_CELLS).unwrap();
        assert_eq!(at(&map, 0.5, 0.5).as_deref(), Some("A"));
        assert_eq!(at(&map, 1.5, 0.5).as_deref(), Some("B"));
        assert!(map.locate(5.0, 5.0).is_none());
        assert_eq!(map.cell("A").and_then(|g| g.name), Some("west".into()));
        assert_eq!(map.ids(), vec!["A", "B"]);
        // On the shared border the first listed cell wins.
        assert_eq!(at(&map, 1.0, 0.5).as_deref(), Some("A"));
        assert!(!map.is_h3());
        assert_eq!(map.describe(), "2 cells");
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
        assert_eq!(at(&map, 0.5, 2.0).as_deref(), Some("ring"));
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

    #[test]
    fn properties_are_parsed() {
        let map = parse(&one_feature(
            r#"{"id": "G-1", "name": "Riverside", "kind": "construction_site",
                "street": "Binhe Road", "department": "Futian street office"}"#,
            &square(0, 0),
        ))
        .unwrap();
        let expected = CellInfo {
            id: GridId::new("G-1"),
            name: Some("Riverside".into()),
            kind: Some("construction_site".into()),
            street: Some("Binhe Road".into()),
            department: Some("Futian street office".into()),
        };
        assert_eq!(map.cell("G-1"), Some(expected.clone()));
        assert_eq!(map.locate(0.5, 0.5), Some(expected));
        let grid = &map.grids()[0];
        assert_eq!(grid.kind.as_deref(), Some("construction_site"));
        assert_eq!(grid.street.as_deref(), Some("Binhe Road"));
        assert_eq!(grid.department.as_deref(), Some("Futian street office"));
        // All optional, `null` as absent.
        let map = parse(&one_feature(r#"{"id": 7, "kind": null}"#, &square(0, 0))).unwrap();
        let info = map.cell("7").unwrap();
        assert_eq!((info.name, info.kind, info.street), (None, None, None));
        assert!(map.cell("8").is_none());
    }

    #[test]
    fn wrong_property_types_and_kinds_are_named() {
        for key in ["name", "kind", "street", "department"] {
            let text = one_feature(&format!(r#"{{"id": "A", "{key}": 3}}"#), &square(0, 0));
            let err = parse(&text).unwrap_err().to_string();
            let expected = format!("feature 0 (`A`): `properties.{key}` must be a string");
            assert!(err.contains(&expected), "{err}\n  expected: {expected}");
        }
        let long = "a".repeat(65);
        for kind in ["Residential", "road-side", "", "学校", long.as_str()] {
            let text = one_feature(
                &format!(r#"{{"id": "A", "kind": "{kind}"}}"#),
                &square(0, 0),
            );
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("feature 0 (`A`): `properties.kind`: kind `")
                    && err.contains("must be 1 to 64 of `a-z`, `0-9` and `_`"),
                "{err}"
            );
        }
        // Any token goes, not only a known list.
        let text = one_feature(r#"{"id": "A", "kind": "pier_2"}"#, &square(0, 0));
        assert_eq!(
            parse(&text).unwrap().cell("A").unwrap().kind.as_deref(),
            Some("pier_2")
        );
    }

    #[test]
    fn zero_area_cells_and_empty_collections_are_rejected() {
        let flat = r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[2,0],[0,0]]]}"#;
        let err = parse(&one_feature(r#"{"id": "flat"}"#, flat))
            .unwrap_err()
            .to_string();
        assert!(err.contains("feature 0 (`flat`): has zero area"), "{err}");
        let point = r#"{"type":"Polygon","coordinates":[[[1,1],[1,1],[1,1],[1,1]]]}"#;
        let err = parse(&one_feature(r#"{"id": "dot"}"#, point))
            .unwrap_err()
            .to_string();
        assert!(err.contains("feature 0 (`dot`): has zero area"), "{err}");
        let multi = r#"{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]],[[[5,5],[6,6],[7,7],[5,5]]]]}"#;
        let err = parse(&one_feature(r#"{"id": "m"}"#, multi))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("feature 0 (`m`): polygon 1 has zero area"),
            "{err}"
        );
        let err = parse(r#"{"type":"FeatureCollection","features":[]}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "grid file t.geojson: the FeatureCollection has no features"
        );
    }

    #[test]
    fn overlapping_cells_are_rejected_naming_both_features() {
        let big = r#"{"type":"Polygon","coordinates":[[[0,0],[3,0],[3,3],[0,3],[0,0]]]}"#;
        let shifted = r#"{"type":"Polygon","coordinates":[[[0.5,0.5],[1.5,0.5],[1.5,1.5],[0.5,1.5],[0.5,0.5]]]}"#;
        let text = features(&[
            (r#"{"id": "G-0"}"#, &square(10, 10)),
            (r#"{"id": "G-1"}"#, &square(0, 0)),
            (r#"{"id": "G-2"}"#, shifted),
        ]);
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("feature 2 (`G-2`): overlaps feature 1 (`G-1`)"),
            "{err}"
        );
        // A cell inside another overlaps it too.
        let text = features(&[
            (r#"{"id": "outer"}"#, big),
            (r#"{"id": "inner"}"#, &square(1, 1)),
        ]);
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("feature 1 (`inner`): overlaps feature 0 (`outer`)"),
            "{err}"
        );
        // So does the same square given twice under two ids.
        let text = features(&[
            (r#"{"id": "a"}"#, &square(0, 0)),
            (r#"{"id": "b"}"#, &square(0, 0)),
        ]);
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("feature 1 (`b`): overlaps feature 0 (`a`)"),
            "{err}"
        );
    }

    #[test]
    fn touching_cells_are_neighbours_not_overlaps() {
        // A 2x2 block: sides shared between A-B, A-C, B-D, C-D; corners between A-D, B-C.
        let (a, b, c, d, far) = (
            square(0, 0),
            square(1, 0),
            square(0, 1),
            square(1, 1),
            square(5, 5),
        );
        let text = features(&[
            (r#"{"id": "D"}"#, &d),
            (r#"{"id": "A"}"#, &a),
            (r#"{"id": "C"}"#, &c),
            (r#"{"id": "B"}"#, &b),
            (r#"{"id": "far"}"#, &far),
        ]);
        let map = parse(&text).unwrap();
        let ids = |id: &str| -> Vec<String> {
            map.neighbours(id).iter().map(|g| g.to_string()).collect()
        };
        assert_eq!(ids("A"), ["B", "C", "D"]);
        assert_eq!(ids("B"), ["A", "C", "D"]);
        assert_eq!(ids("D"), ["A", "B", "C"]);
        assert!(ids("far").is_empty());
        assert!(ids("nowhere").is_empty());
    }

    #[test]
    fn locate_uses_the_index_and_the_first_listed_cell_wins_on_borders() {
        let text = features(&[
            (r#"{"id": "D"}"#, &square(1, 1)),
            (r#"{"id": "A"}"#, &square(0, 0)),
            (r#"{"id": "C"}"#, &square(0, 1)),
            (r#"{"id": "B"}"#, &square(1, 0)),
        ]);
        let map = parse(&text).unwrap();
        assert_eq!(at(&map, 0.5, 0.5).as_deref(), Some("A"));
        assert_eq!(at(&map, 1.5, 1.5).as_deref(), Some("D"));
        // The corner all four share, and the A-B and A-C borders: the first listed.
        assert_eq!(at(&map, 1.0, 1.0).as_deref(), Some("D"));
        assert_eq!(at(&map, 1.0, 0.5).as_deref(), Some("A"));
        assert_eq!(at(&map, 0.5, 1.0).as_deref(), Some("A"));
        assert_eq!(at(&map, 1.5, 1.0).as_deref(), Some("D"));
        // Outer borders still belong to their cell; outside, and not a number, to none.
        assert_eq!(at(&map, 0.0, 0.0).as_deref(), Some("A"));
        assert_eq!(at(&map, 2.0, 2.0).as_deref(), Some("D"));
        assert!(map.locate(2.0001, 1.0).is_none());
        assert!(map.locate(f64::NAN, 0.5).is_none());
        // In a bounding box but not in the triangle: the index narrows, `covers` decides.
        let triangle = r#"{"type":"Polygon","coordinates":[[[0,0],[2,0],[0,2],[0,0]]]}"#;
        let map = parse(&one_feature(r#"{"id": "T"}"#, triangle)).unwrap();
        assert_eq!(at(&map, 0.5, 0.5).as_deref(), Some("T"));
        assert!(map.locate(1.5, 1.5).is_none());
    }

    #[test]
    fn h3_cells_locate_and_round_trip() {
        let map = GridMap::h3(9, Some("residential".into()), Some("Futian".into())).unwrap();
        assert!(map.is_h3());
        assert_eq!(map.describe(), "H3 cells at resolution 9");
        assert_eq!(map.h3_resolution(), Some(9));
        assert!(map.grids().is_empty() && map.ids().is_empty());
        // The example from H3's own documentation.
        let here = map.locate(-122.418307270836, 37.7752702151959).unwrap();
        assert_eq!(here.id.as_str(), "8928308280fffff");
        assert_eq!(here.kind.as_deref(), Some("residential"));
        assert_eq!(here.department.as_deref(), Some("Futian"));
        assert_eq!(map.cell("8928308280fffff"), Some(here.clone()));
        // Upper case names the same cell, under its canonical id.
        assert_eq!(
            map.cell("8928308280FFFFF").map(|c| c.id),
            Some(here.id.clone())
        );

        let around = map.neighbours("8928308280fffff");
        assert_eq!(around.len(), 6, "{around:?}");
        assert!(around.windows(2).all(|w| w[0] < w[1]), "sorted: {around:?}");
        assert!(!around.contains(&here.id));
        for n in &around {
            assert!(map.cell(n.as_str()).is_some(), "{n}");
            assert!(map.neighbours(n.as_str()).contains(&here.id), "{n}");
        }
        // Not cells of this grid: another resolution, not hex, not an index.
        for id in [
            "872830828ffffff",
            "+8928308280fffff",
            "G-0101",
            "",
            "ffffffffffffffff",
        ] {
            assert!(map.cell(id).is_none(), "{id}");
            assert!(map.neighbours(id).is_empty(), "{id}");
        }
        assert!(map.locate(200.0, 0.0).is_none());
        assert!(map.locate(0.0, f64::INFINITY).is_none());
    }

    #[test]
    fn h3_settings_are_checked() {
        let err = GridMap::h3(16, None, None).unwrap_err();
        assert!(matches!(
            err,
            GridError::H3 {
                setting: "resolution",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "H3 grid: resolution 16 is out of range: H3 has 0 (coarsest) to 15 (finest)"
        );
        assert!(GridMap::h3(0, None, None).is_ok());
        assert!(GridMap::h3(15, None, None).is_ok());
        let err = GridMap::h3(9, Some("Road".into()), None).unwrap_err();
        assert!(
            matches!(
                err,
                GridError::H3 {
                    setting: "kind",
                    ..
                }
            ),
            "{err}"
        );
    }
}

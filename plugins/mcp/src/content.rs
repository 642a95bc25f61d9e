//! A `tools/call` result as the model gets it.
//!
//! Text goes through as it is; images become the result's images (shown to
//! models that take images, after the step's results), each also named in a
//! line of the text so a text-only model knows what it missed; what a model
//! cannot take (audio, binary resources) is described in a line. An image
//! is passed on only once it is known to be what it says: a malformed one
//! would be stored in the conversation and make every later request to the
//! model fail.

use base64::Engine as _;
use dispatch_contracts::tool::{ImageRef, ToolOutput};
use serde_json::Value;

/// Text longer than this is cut (with a note): a tool result goes into
/// every later model request of the conversation, and it must fit in one
/// stored chunk — the store refuses chunks over 1 MiB by default, and JSON
/// escaping can make text up to six times longer (`\u0001`), so 128 KiB
/// always fits. (At 1 MiB a large result failed to save and aborted the
/// turn.) Near `read_file`'s 100 KiB.
pub const MAX_RESULT_BYTES: usize = 128 * 1024;
/// The largest image passed on, as base64 text: its `data:` URL must fit in
/// one stored chunk (the store refuses chunks over 1 MiB by default).
pub const MAX_IMAGE_BASE64: usize = 768 * 1024;
/// At most this much base64 of images per result; later images are
/// described instead. Like the text, they go with every later request.
pub const MAX_IMAGES_BASE64: usize = 2 * MAX_IMAGE_BASE64;

/// The formats OpenAI-compatible vision models accept, with the bytes
/// each file starts with.
const FORMATS: &[(&str, &str)] =
    &[("image/png", "PNG"), ("image/jpeg", "JPEG"), ("image/gif", "GIF"), ("image/webp", "WebP")];

/// Convert a `CallToolResult` (any serializable shape of it).
pub fn convert<T: serde::Serialize>(result: &T) -> ToolOutput {
    let value = serde_json::to_value(result).unwrap_or_default();
    let is_error = value.get("isError").and_then(Value::as_bool).unwrap_or(false);
    let mut parts: Vec<String> = Vec::new();
    let mut images: Vec<ImageRef> = Vec::new();
    let mut image_bytes = 0usize;
    let mut attach = |mime: &str, data: &str, what: &str| -> String {
        let verdict = if image_bytes + data.len() > MAX_IMAGES_BASE64 {
            Err(format!("over this result's {} KiB of images", MAX_IMAGES_BASE64 / 1024))
        } else {
            checked_image(mime, data)
        };
        match verdict {
            Ok((image, size)) => {
                image_bytes += data.len();
                images.push(image);
                format!("[{what} ({mime}, {}) attached]", kib(size))
            }
            Err(why) => format!("[{what} ({mime}) not shown: {why}]"),
        }
    };
    for block in value.get("content").and_then(Value::as_array).into_iter().flatten() {
        let field = |name: &str| block.get(name).and_then(Value::as_str).unwrap_or_default();
        let part = match field("type") {
            "text" => field("text").to_owned(),
            "image" => attach(field("mimeType"), field("data"), "image"),
            "audio" => format!(
                "[audio ({}, {} bytes base64) not shown: models here take text and images]",
                field("mimeType"),
                field("data").len()
            ),
            "resource" => {
                let r = block.get("resource").cloned().unwrap_or_default();
                let text = |name: &str| r.get(name).and_then(Value::as_str);
                let uri = text("uri").unwrap_or_default();
                let mime = text("mimeType").unwrap_or("unknown type");
                match (text("text"), text("blob")) {
                    (Some(body), _) => format!("[resource {uri}]\n{body}"),
                    (None, Some(blob)) if mime.starts_with("image/") => {
                        attach(mime, blob, &format!("resource {uri}"))
                    }
                    _ => format!("[resource {uri} ({mime}) not shown: binary]"),
                }
            }
            "resource_link" => format!("[resource link {}: {}]", field("name"), field("uri")),
            other => format!("[{other} content not shown]"),
        };
        parts.push(part);
    }
    if parts.is_empty() {
        if let Some(structured) = value.get("structuredContent") {
            parts.push(structured.to_string());
        }
    }
    let mut content = parts.join("\n");
    if content.len() > MAX_RESULT_BYTES {
        let mut cut = MAX_RESULT_BYTES;
        while !content.is_char_boundary(cut) {
            cut -= 1;
        }
        let total = content.len();
        content.truncate(cut);
        content.push_str(&format!("\n[result cut at {MAX_RESULT_BYTES} of {total} bytes]"));
    }
    ToolOutput::new(content, is_error).with_images(images)
}

/// An image as a `data:` URL and its decoded size, once it is a format
/// models take, within the size limit, valid base64, and its bytes are
/// that format's; otherwise why not.
fn checked_image(mime: &str, data: &str) -> Result<(ImageRef, usize), String> {
    let Some((_, format)) = FORMATS.iter().find(|(m, _)| *m == mime) else {
        return Err("models take PNG, JPEG, GIF or WebP images".to_owned());
    };
    if data.len() > MAX_IMAGE_BASE64 {
        return Err(format!("{} of base64, over the {} KiB limit", kib(data.len()), MAX_IMAGE_BASE64 / 1024));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("its data is not valid base64 ({e})"))?;
    let signed = match *format {
        "PNG" => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "JPEG" => bytes.starts_with(b"\xff\xd8\xff"),
        "GIF" => bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a"),
        _ => bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP",
    };
    if !signed {
        return Err(format!("its bytes are not a {format} file"));
    }
    let url = format!("data:{mime};base64,{data}");
    Ok((ImageRef { url, mime_type: Some(mime.to_owned()) }, bytes.len()))
}

fn kib(bytes: usize) -> String {
    if bytes < 1024 {
        format!("{bytes} bytes")
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The smallest PNG there is: a 1×1 transparent pixel.
    const PNG: &str =
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

    #[test]
    fn text_goes_through_and_other_content_is_described() {
        let r = json!({"content": [
            {"type": "text", "text": "hello"},
            {"type": "audio", "data": "aGk=", "mimeType": "audio/wav"},
            {"type": "resource", "resource": {"uri": "file:///a", "text": "body"}},
            {"type": "resource", "resource": {"uri": "file:///z", "blob": "aGk=", "mimeType": "application/zip"}},
            {"type": "resource_link", "uri": "file:///b", "name": "b"}
        ], "isError": true});
        let out = convert(&r);
        assert!(out.is_error);
        assert_eq!(
            out.content,
            "hello\n[audio (audio/wav, 4 bytes base64) not shown: models here take text and images]\n\
             [resource file:///a]\nbody\n[resource file:///z (application/zip) not shown: binary]\n\
             [resource link b: file:///b]"
        );
        assert!(out.images.is_empty());
        let structured = convert(&json!({"content": [], "structuredContent": {"sum": 3}}));
        assert_eq!(structured, ToolOutput::ok(r#"{"sum":3}"#));
    }

    #[test]
    fn images_are_attached_in_order_and_named_in_the_text() {
        let r = json!({"content": [
            {"type": "text", "text": "before"},
            {"type": "image", "data": PNG, "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///shot.png", "blob": PNG, "mimeType": "image/png"}},
            {"type": "text", "text": "after"}
        ]});
        let out = convert(&r);
        assert_eq!(
            out.content,
            "before\n[image (image/png, 70 bytes) attached]\n\
             [resource file:///shot.png (image/png, 70 bytes) attached]\nafter"
        );
        let url = format!("data:image/png;base64,{PNG}");
        assert_eq!(out.images, vec![ImageRef { url, mime_type: Some("image/png".into()) }; 2]);
    }

    /// Regression guard: an image the model would refuse must not reach the
    /// conversation, where it would fail every later request.
    #[test]
    fn an_image_models_would_refuse_is_described_instead() {
        let huge = "A".repeat(MAX_IMAGE_BASE64 + 4);
        let cases = [
            ("image/svg+xml", PNG, "models take PNG, JPEG, GIF or WebP images"),
            ("image/png", "not base64!", "not valid base64"),
            ("image/jpeg", PNG, "its bytes are not a JPEG file"),
            ("image/png", huge.as_str(), "over the 768 KiB limit"),
        ];
        for (mime, data, why) in cases {
            let out = convert(&json!({"content": [{"type": "image", "data": data, "mimeType": mime}]}));
            assert!(out.images.is_empty(), "{mime}: {out:?}");
            assert!(out.content.starts_with(&format!("[image ({mime}) not shown: ")), "{}", out.content);
            assert!(out.content.contains(why), "{mime}: {}", out.content);
        }
    }

    #[test]
    fn images_past_the_results_budget_are_described() {
        // A valid PNG padded to just under the per-image limit.
        let mut png = base64::engine::general_purpose::STANDARD.decode(PNG).unwrap();
        png.resize(MAX_IMAGE_BASE64 / 4 * 3 - 3, 0);
        let big = base64::engine::general_purpose::STANDARD.encode(&png);
        let block = json!({"type": "image", "data": big, "mimeType": "image/png"});
        let out = convert(&json!({"content": [block, block, block]}));
        assert_eq!(out.images.len(), 2);
        assert!(
            out.content.ends_with("not shown: over this result's 1536 KiB of images]"),
            "{}",
            out.content
        );
    }

    #[test]
    fn a_huge_result_is_cut_on_a_character_boundary() {
        // "a" first: every `é` then starts at an odd offset, so the limit
        // (even) falls inside one and the cut has to step back a byte.
        let text = format!("a{}", "é".repeat(MAX_RESULT_BYTES));
        let out = convert(&json!({"content": [{"type": "text", "text": text}]}));
        let note = format!("\n[result cut at {MAX_RESULT_BYTES} of {} bytes]", 2 * MAX_RESULT_BYTES + 1);
        assert!(out.content.ends_with(&note), "{}", &out.content[out.content.len() - 60..]);
        assert_eq!(out.content.len(), MAX_RESULT_BYTES - 1 + note.len());
    }

    #[test]
    fn a_cut_result_fits_in_one_stored_chunk_however_it_escapes() {
        // Control characters escape to six bytes each in the stored JSON.
        let text = "\u{1}".repeat(2 * MAX_RESULT_BYTES);
        let out = convert(&json!({"content": [{"type": "text", "text": text}]}));
        assert!(serde_json::to_string(&out.content).unwrap().len() < 1 << 20);
    }
}

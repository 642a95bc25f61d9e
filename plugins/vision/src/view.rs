//! The decisions of the vision plugin, without effects: which images a
//! request shows, what stands in for the others, and the texts a model
//! reads. The plugin ([`crate`]) supplies the catalog, the settings and the
//! descriptions.

use dispatch_contracts::catalog::ModelList;
use dispatch_contracts::protocol::session::ImageRef;
use dispatch_kernel::wire::{ChatMessage, Chunk};

/// Where an image chunk is: message index, chunk index.
pub type Position = (usize, usize);

/// The image chunks of `messages`, oldest first.
pub fn image_positions(messages: &[ChatMessage]) -> Vec<Position> {
    let mut out = Vec::new();
    for (mi, m) in messages.iter().enumerate() {
        for (ci, c) in m.chunks.iter().enumerate() {
            if matches!(c, Chunk::Image { .. }) {
                out.push((mi, ci));
            }
        }
    }
    out
}

/// The images a vision model with `limit` is not sent natively: the oldest
/// ones past the limit (none when `limit` is 0, "no limit").
pub fn surplus(positions: &[Position], limit: u64) -> &[Position] {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if limit == 0 || positions.len() <= limit {
        return &[];
    }
    &positions[..positions.len() - limit]
}

/// Whether the catalog says `model` sees images (its info, which the
/// providers fill from their listings and a model-name heuristic).
pub fn sees_images(list: &ModelList, model: &str) -> bool {
    list.model_info.get(model).and_then(|i| i.vision) == Some(true)
}

/// The first vision model of the catalog other than `except`.
pub fn first_vision_model(list: &ModelList, except: Option<&str>) -> Option<String> {
    list.models.iter().find(|m| Some(m.as_str()) != except && sees_images(list, m)).cloned()
}

/// What a text-only model reads in place of image `n` (1-based over the
/// request) when a vision model can answer questions about it.
pub fn placeholder(n: usize) -> String {
    format!(
        "[Image {n} attached — you cannot view images. Call the consult_vision tool with \
         imageIds=[{n}] and a specific question to analyze it via a vision-capable model.]"
    )
}

/// What a text-only model reads in place of an image when no vision model
/// is available.
pub const NO_VISION_PLACEHOLDER: &str = "[Image attached — no vision-capable model is available to \
analyze it. Install or configure a vision-capable model (e.g. kimi) to enable image analysis.]";

/// What a vision model reads in place of an image past the limit.
pub fn described(description: &str) -> String {
    format!("[Compacted image]: {description}")
}

/// The description of an image when no vision model can make one.
pub const NO_DESCRIBER: &str = "[Image was compacted — no vision model available to describe it.]";

/// A text-only model's view: every image replaced by its placeholder.
/// Answers the new messages and the images by their 1-based number (empty
/// when `vision_available` is false: there is nobody to consult).
pub fn text_only(messages: &[ChatMessage], vision_available: bool) -> (Vec<ChatMessage>, Vec<ImageRef>) {
    let mut images = Vec::new();
    let out = messages
        .iter()
        .map(|m| {
            if !m.chunks.iter().any(|c| matches!(c, Chunk::Image { .. })) {
                return m.clone();
            }
            let chunks = m
                .chunks
                .iter()
                .map(|c| match c {
                    Chunk::Image { url, mime_type } => {
                        if vision_available {
                            images.push(ImageRef { url: url.clone(), mime_type: mime_type.clone() });
                            Chunk::text(placeholder(images.len()))
                        } else {
                            Chunk::text(NO_VISION_PLACEHOLDER)
                        }
                    }
                    other => other.clone(),
                })
                .collect();
            ChatMessage { role: m.role, chunks }
        })
        .collect();
    (out, images)
}

/// The longest question kept in a consultation's title.
const TITLE_QUESTION_CHARS: usize = 80;

/// The title of a consultation conversation.
pub fn consultation_title(question: &str) -> String {
    let q = question.trim();
    match q.char_indices().nth(TITLE_QUESTION_CHARS) {
        Some((i, _)) => format!("IMAGE - {}…", &q[..i]),
        None => format!("IMAGE - {q}"),
    }
}

/// The `consult_vision` result.
pub fn consultation_result(conversation_id: &str, answer: &str) -> String {
    format!(
        "Vision consultation opened in conversation {conversation_id}.\n\nResponse: {}\n\nTo ask follow-up \
         questions about this image, use the dispatch CLI (conversation: {conversation_id}).",
        answer.trim()
    )
}

/// The media type of an image file, by its extension.
pub fn mime_of(path: &std::path::Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("bmp") => "image/bmp",
        Some("svg") => "image/svg+xml",
        _ => "image/png",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_contracts::catalog::ModelInfo;
    use dispatch_kernel::wire::Role;

    fn image(url: &str) -> Chunk {
        Chunk::Image { url: url.into(), mime_type: Some("image/png".into()) }
    }

    fn history() -> Vec<ChatMessage> {
        vec![
            ChatMessage { role: Role::User, chunks: vec![Chunk::text("look"), image("a"), image("b")] },
            ChatMessage { role: Role::Assistant, chunks: vec![Chunk::text("seen")] },
            ChatMessage { role: Role::User, chunks: vec![image("c"), Chunk::text("and this")] },
        ]
    }

    #[test]
    fn the_oldest_images_past_the_limit_are_the_surplus_and_zero_means_no_limit() {
        let p = image_positions(&history());
        assert_eq!(p, vec![(0, 1), (0, 2), (2, 0)]);
        assert_eq!(surplus(&p, 1), &[(0, 1), (0, 2)]);
        assert_eq!(surplus(&p, 3), &[] as &[Position]);
        assert_eq!(surplus(&p, 0), &[] as &[Position]);
    }

    #[test]
    fn a_text_only_view_numbers_images_over_the_whole_request_and_keeps_the_rest() {
        let (view, images) = text_only(&history(), true);
        assert_eq!(images.iter().map(|i| i.url.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(view[0].chunks[0], Chunk::text("look"));
        assert_eq!(view[0].chunks[2], Chunk::text(placeholder(2)));
        assert_eq!(view[1], history()[1]);
        assert_eq!(view[2].chunks[0], Chunk::text(placeholder(3)));
        assert!(placeholder(3).contains("imageIds=[3]"));
        let (view, images) = text_only(&history(), false);
        assert!(images.is_empty());
        assert_eq!(view[2].chunks[0], Chunk::text(NO_VISION_PLACEHOLDER));
    }

    #[test]
    fn only_a_model_whose_info_says_so_sees_images() {
        let mut list = ModelList { models: vec!["a/text".into(), "a/eyes".into()], ..ModelList::default() };
        list.model_info.insert("a/text".into(), ModelInfo { vision: Some(false), ..ModelInfo::default() });
        assert_eq!(first_vision_model(&list, None), None);
        list.model_info.insert("a/eyes".into(), ModelInfo { vision: Some(true), ..ModelInfo::default() });
        assert!(sees_images(&list, "a/eyes") && !sees_images(&list, "a/text") && !sees_images(&list, "b/x"));
        assert_eq!(first_vision_model(&list, None).as_deref(), Some("a/eyes"));
        assert_eq!(first_vision_model(&list, Some("a/eyes")), None);
    }

    #[test]
    fn a_long_question_is_cut_in_the_title_and_the_answer_is_trimmed_in_the_result() {
        assert_eq!(consultation_title(" what is it? "), "IMAGE - what is it?");
        let long = "é".repeat(100);
        assert_eq!(consultation_title(&long), format!("IMAGE - {}…", "é".repeat(80)));
        let r = consultation_result("c1", "  a cat \n");
        assert!(
            r.starts_with("Vision consultation opened in conversation c1.\n\nResponse: a cat\n\n"),
            "{r}"
        );
        assert!(r.ends_with("(conversation: c1)."));
        assert_eq!(mime_of(std::path::Path::new("x.JPG")), "image/jpeg");
        assert_eq!(mime_of(std::path::Path::new("x")), "image/png");
    }
}

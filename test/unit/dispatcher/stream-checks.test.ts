// What the dispatcher keeps of a TaskLog's streamed chunks: their text in order, bounded per message.
import { describe, expect, it } from 'vitest';
import { LOG_CUT_MARKER, STREAM_MAX_CHUNK_CHARS, STREAM_MAX_CHUNKS_PER_MESSAGE } from '../../../src/api/data-api.ts';
import { streamText } from '../../../src/dispatcher/wire-checks.ts';

const chunk = (text: string) => ({ timeMs: 0, text });

describe('streamText', () => {
  it('joins the chunks in order, adding nothing', () => {
    expect(streamText([chunk('Hé'), chunk('llo'), chunk('\n'), chunk(' 🙂')])).toBe('Héllo\n 🙂');
    expect(streamText([])).toBe('');
    expect(streamText(undefined)).toBe('');
  });

  it('keeps STREAM_MAX_CHUNKS_PER_MESSAGE chunks and cuts one over STREAM_MAX_CHUNK_CHARS, marked', () => {
    const many = Array.from({ length: STREAM_MAX_CHUNKS_PER_MESSAGE + 5 }, () => chunk('a'));
    expect(streamText(many)).toBe('a'.repeat(STREAM_MAX_CHUNKS_PER_MESSAGE));
    expect(streamText([chunk('b'.repeat(STREAM_MAX_CHUNK_CHARS + 1))])).toBe(
      `${'b'.repeat(STREAM_MAX_CHUNK_CHARS)}${LOG_CUT_MARKER}`,
    );
  });
});

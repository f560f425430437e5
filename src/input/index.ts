/** Reading a billing-cycle input file: streamed, parsed and validated, with line numbers. */
export { CSV_MAX_RECORD_CHARS } from './csv.js';
export { NDJSON_MAX_LINE_BYTES } from './ndjson.js';
export { formatDuplicateProblem, formatProblem, formatRowProblems } from './problem.js';
export { type ReadInputOptions, readInput, readInputBatches } from './read-input.js';
export type { InputCharge, InputField, InputProblem, InputRow } from './row.js';
export { hashInput, type InputFormat, READ_CHUNK_BYTES } from './source.js';

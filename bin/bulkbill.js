#!/usr/bin/env node
// The CLI runs from the build that `npm install` makes (the `prepare` script).
import '../dist/cli/main.js';

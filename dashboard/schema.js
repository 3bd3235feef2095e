// The part of JSON Schema that job payloads use, checked in the browser so the form can point at
// a mistake before submitting: type, enum, required, properties, additionalProperties, items,
// minimum/maximum (and exclusive), minLength/maxLength, minItems/maxItems. The server validates
// everything again; its 422 `detail` is shown as well.

const typeOf = (v) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

function typeMatches(type, v) {
  if (type === 'integer') return Number.isInteger(v);
  return type === typeOf(v);
}

/** Errors of `value` against `schema`: [{path, message}], empty when valid. */
export function validate(schema, value, path = '') {
  if (!schema || typeof schema !== 'object') return [];
  const at = path || 'payload';
  const errors = [];
  if (schema.type) {
    const types = [].concat(schema.type);
    if (!types.some((t) => typeMatches(t, value))) {
      return [{ path: at, message: `${at} must be ${types.join(' or ')}, not ${typeOf(value)}` }];
    }
  }
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) {
    errors.push({ path: at, message: `${at} must be one of ${schema.enum.map((e) => JSON.stringify(e)).join(', ')}` });
  }
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) errors.push({ path: at, message: `${at} must be at least ${schema.minimum}` });
    if (schema.maximum !== undefined && value > schema.maximum) errors.push({ path: at, message: `${at} must be at most ${schema.maximum}` });
    if (typeof schema.exclusiveMinimum === 'number' && value <= schema.exclusiveMinimum) errors.push({ path: at, message: `${at} must be more than ${schema.exclusiveMinimum}` });
    if (typeof schema.exclusiveMaximum === 'number' && value >= schema.exclusiveMaximum) errors.push({ path: at, message: `${at} must be less than ${schema.exclusiveMaximum}` });
  }
  if (typeof value === 'string') {
    if (schema.minLength !== undefined && value.length < schema.minLength) errors.push({ path: at, message: `${at} must have at least ${schema.minLength} characters` });
    if (schema.maxLength !== undefined && value.length > schema.maxLength) errors.push({ path: at, message: `${at} must have at most ${schema.maxLength} characters` });
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) errors.push({ path: at, message: `${at} must have at least ${schema.minItems} items` });
    if (schema.maxItems !== undefined && value.length > schema.maxItems) errors.push({ path: at, message: `${at} must have at most ${schema.maxItems} items` });
    if (schema.items && typeof schema.items === 'object') {
      value.forEach((item, i) => errors.push(...validate(schema.items, item, `${at}[${i}]`)));
    }
  }
  if (typeOf(value) === 'object') {
    const props = schema.properties ?? {};
    for (const name of schema.required ?? []) {
      if (!(name in value)) errors.push({ path: `${at}.${name}`, message: `${at}.${name} is required` });
    }
    for (const [name, v] of Object.entries(value)) {
      if (name in props) errors.push(...validate(props[name], v, `${at}.${name}`));
      else if (schema.additionalProperties === false) errors.push({ path: `${at}.${name}`, message: `${at}.${name} is not a known field (known: ${Object.keys(props).join(', ') || 'none'})` });
      else if (typeof schema.additionalProperties === 'object') errors.push(...validate(schema.additionalProperties, v, `${at}.${name}`));
    }
  }
  return errors;
}

/** A starting payload for a schema: its example or default, else its required and defaulted fields. */
export function template(schema) {
  if (!schema || typeof schema !== 'object') return {};
  if (schema.examples?.length) return schema.examples[0];
  if (schema.default !== undefined) return schema.default;
  const type = [].concat(schema.type ?? 'object')[0];
  switch (type) {
    case 'object': {
      const out = {};
      for (const [name, prop] of Object.entries(schema.properties ?? {})) {
        if (schema.required?.includes(name) || prop.default !== undefined) out[name] = template(prop);
      }
      return out;
    }
    case 'integer':
    case 'number':
      return schema.minimum ?? 0;
    case 'string':
      return schema.enum?.[0] ?? '';
    case 'boolean':
      return false;
    case 'array':
      return [];
    default:
      return null;
  }
}

/** One line per field of an object schema: "ms (integer, required): Total time to sleep, in ms." */
export function describe(schema) {
  return Object.entries(schema?.properties ?? {}).map(([name, p]) => {
    const facts = [[].concat(p.type ?? 'any').filter((t) => t !== 'null').join(' or ')];
    if (schema.required?.includes(name)) facts.push('required');
    if (p.default !== undefined) facts.push(`default ${JSON.stringify(p.default)}`);
    return `${name} (${facts.join(', ')})${p.description ? `: ${p.description}` : ''}`;
  });
}

import { createAdyenShape } from './adyen.js';
import { createBraintreeShape } from './braintree.js';
import { createCheckoutShape } from './checkout.js';
import { createDefaultShape } from './default.js';
import { createGoCardlessShape } from './gocardless.js';
import type { MockShape, ShapeContext, ShapeName } from './shape.js';
import { createSquareShape } from './square.js';
import { createStripeShape } from './stripe.js';

export { SHAPE_NAMES, type ShapeName } from './shape.js';

const FACTORIES: Record<ShapeName, (context: ShapeContext) => MockShape> = {
  default: createDefaultShape,
  stripe: createStripeShape,
  adyen: createAdyenShape,
  braintree: createBraintreeShape,
  square: createSquareShape,
  checkout: createCheckoutShape,
  gocardless: createGoCardlessShape,
};

/** The shape `name`, bound to this server's API key and ids. */
export function createShape(name: ShapeName, context: ShapeContext): MockShape {
  return FACTORIES[name](context);
}
